"""Hugging Face models built from configs (no weights downloaded), with the signature of
``arch.factory``: builder(width, depth, vocab_size, seq_len) -> nn.Module. Width grows with a
fixed head dimension, as in our GPT."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network

from transformers import (  # (after the environment is set)
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils import logging

logging.set_verbosity_error()

HEAD_DIM = 16


def _heads(width: int) -> int:
    if width % HEAD_DIM:
        raise ValueError(f"width {width} is not a multiple of the head dimension {HEAD_DIM}")
    return width // HEAD_DIM


def llama(width: int, depth: int, vocab_size: int, seq_len: int) -> LlamaForCausalLM:
    """A Llama (RMSNorm, SwiGLU, RoPE, untied embeddings) of the given width and depth."""
    heads = _heads(width)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth,
        num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab_size,
        max_position_embeddings=seq_len, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa"))


def llama_tied(width: int, depth: int, vocab_size: int, seq_len: int) -> LlamaForCausalLM:
    """The Llama above with its readout tied to the embedding."""
    model = llama(width, depth, vocab_size, seq_len)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    return model


def gpt2(width: int, depth: int, vocab_size: int, seq_len: int) -> GPT2LMHeadModel:
    """A GPT-2 (LayerNorm with biases, fused qkv, learned positions, tied embeddings)."""
    return GPT2LMHeadModel(GPT2Config(
        n_embd=width, n_layer=depth, n_head=_heads(width), vocab_size=vocab_size,
        n_positions=seq_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None, attn_implementation="sdpa"))


def qwen2(width: int, depth: int, vocab_size: int, seq_len: int) -> Qwen2ForCausalLM:
    """A Qwen2 (Llama names, with q/k/v biases and grouped-query attention)."""
    heads = _heads(width)
    return Qwen2ForCausalLM(Qwen2Config(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        vocab_size=vocab_size, max_position_embeddings=seq_len, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa"))
