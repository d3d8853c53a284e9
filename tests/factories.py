"""Model factories that do not fit (for the spec check's messages), in plain torch."""

from torch import nn


class _Tiny(nn.Module):
    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.mystery = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.mystery(self.embed(idx)))


def unmatched(width: int, depth: int, vocab_size: int, seq_len: int) -> nn.Module:
    """Parameters the llama preset does not know."""
    return _Tiny(width, vocab_size)


def fails(width: int, depth: int, vocab_size: int, seq_len: int) -> nn.Module:
    raise ValueError(f"no model of width {width} here")


def not_a_module(width: int, depth: int, vocab_size: int, seq_len: int) -> int:
    return width
