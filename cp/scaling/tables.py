"""The parameterisations, written as rule tables.

Each table lists, per module group, the exponents of m_N (width), m_L (depth) and rho = m_B/m_D
(batch over training tokens) for every HP kind. Read a row like the paper's table: ``lr=R(width=-1,
depth="alpha - 1")`` means the Adam learning rate of that group is eta * m_N^-1 * m_L^(alpha-1).
Tags in the docstrings follow ../shared/paper-notes.md: [C] CompleteP reference code, [N]/[A]
secondary summaries of the paper, [I] inferred here -- a default that the coordinate check and
the transfer sweeps must vindicate, and that a spec can override.
"""

from __future__ import annotations

from collections.abc import Callable

from .rules import GROUP_SETS, Row, RuleTable, add_rows, row
from .rules import Rule as R

# ---------------------------------------------------------------------------------------------
# Shared rows.

#: SDE batch/duration rules (Malladi et al. 2022, extended to coupled AdamW decay by Complete(d)P):
#: lr x rho^1/2, (1 - beta) x rho, eps x rho^-1/2, PyTorch-coupled weight decay x rho^1/2 (so the
#: per-step shrink lr * wd goes as rho). Exponents beyond the lr are [I] (consistent with several
#: independent implementations).
SDE = row(
    lr=R(rho=1 / 2),
    eps=R(rho=-1 / 2),
    weight_decay=R(rho=1 / 2),
    beta1=R(rho=1),
    beta2=R(rho=1),
)

#: Residual branches: the branch output (attention out-projection, MLP down-projection) is
#: multiplied by m_L^-alpha. This is the one line that applies the depth scaling of the forward.
RESIDUAL_BRANCH = row(multiplier=R(depth="-alpha"))


def _rows(**by_group: Row) -> dict[str, Row]:
    """Expand group-set keys (``hidden``, ``block_norms``...) into one row per group; a later
    key refines an earlier one (exponents of the same kind are replaced, others kept)."""
    rows: dict[str, Row] = {}
    for key, r in by_group.items():
        for g in GROUP_SETS.get(key, (key,)):
            rows[g] = {**rows.get(g, {}), **r}
    return rows


def _with_sde(rows: dict[str, Row]) -> dict[str, Row]:
    return {g: add_rows(r, SDE) for g, r in rows.items()}


# ---------------------------------------------------------------------------------------------
# Tables.


def sp() -> RuleTable:
    """Standard parameterisation: PyTorch-style init (variance 1/fan_in for every matrix,
    including the readout) and one global set of optimiser HPs that do not scale. The baseline
    that does not transfer across width."""
    fan_in_init = row(init_std=R(width=-1 / 2))
    return RuleTable(
        name="sp",
        alpha=0.0,
        rows=_rows(hidden=fan_in_init, unembedding=fan_in_init),
        doc=sp.__doc__ or "",
    )


def mup() -> RuleTable:
    """muP for Adam (Tensor Programs V, "Table 3"/MuReadout form, as in microsoft/mup): hidden
    init variance 1/fan_in, hidden lr eta/m_N, coupled weight decay lambda*m_N (microsoft/mup's
    MuAdamW keeps lr*wd width-invariant), readout forward multiplier 1/m_N. Epsilon is left
    constant, as microsoft/mup does. No depth rule."""
    return RuleTable(
        name="mup",
        alpha=0.0,
        rows=_rows(
            hidden=row(init_std=R(width=-1 / 2), lr=R(width=-1), weight_decay=R(width=1)),
            unembedding=row(multiplier=R(width=-1)),
        ),
        doc=mup.__doc__ or "",
    )


def completep(alpha: float = 1.0, name: str = "completep") -> RuleTable:
    """CompleteP (Dey et al. 2025; EleutherAI/nanoGPT-mup@completep) [C]: muP in width plus
    residual branches x m_L^-alpha, hidden lr eta*m_N^-1*m_L^(alpha-1), gain lr eta*m_L^(alpha-1),
    hidden/gain eps eps*m_N^-1*m_L^-alpha, readout eps eps*m_N^-1, embedding eps constant (the
    bug Complete(d)P fixes), hidden weight decay lambda*m_N,
    readout forward multiplier 1/m_N. alpha = 1 is CompleteP, alpha = 1/2 is Depth-muP.
    QK-norm gains (absent from the reference code) follow the block-norm rule [I]."""
    hidden = row(
        init_std=R(width=-1 / 2),
        lr=R(width=-1, depth="alpha - 1"),
        eps=R(width=-1, depth="-alpha"),
        weight_decay=R(width=1),
    )
    gain = row(lr=R(depth="alpha - 1"), eps=R(width=-1, depth="-alpha"))
    return RuleTable(
        name=name,
        alpha=alpha,
        rows=_rows(
            embedding=row(),
            hidden=hidden,
            branch_out=RESIDUAL_BRANCH,
            block_norms=gain,
            qk_norms=gain,
            final_norm=row(eps=R(width=-1)),
            unembedding=row(multiplier=R(width=-1), eps=R(width=-1)),
        ),
        doc=(completep.__doc__ or ""),
    )


def depth_mup(alpha: float = 0.5) -> RuleTable:
    """Depth-muP (Yang et al., TP-VI; Bordelon et al.): the CompleteP table at alpha = 1/2."""
    t = completep(alpha=alpha, name="depth_mup")
    return RuleTable(name=t.name, alpha=t.alpha, rows=t.rows, doc=depth_mup.__doc__ or "")


def completed_p(alpha: float = 1.0) -> RuleTable:
    """Complete(d)P (arXiv 2512.22382): CompleteP in width and depth, with

    - the embedding-epsilon fix: embedding eps x m_N^-1 [C][A][N];
    - QK-norm gains: eps width-independent [A], x m_L^-alpha [I]; lr x m_L^(alpha-1) [I];
    - the readout multiplier absorbed into init and lr (so fused cross-entropy kernels apply):
      readout init x m_N^-1, lr x m_N^-1, eps constant, weight decay x m_N, no forward
      multiplier [A][N]; exponents [I];
    - final-norm eps x m_N^-1 [I];
    - the SDE batch/horizon rules on every group (lr x rho^1/2, (1-beta) x rho, eps x rho^-1/2,
      coupled weight decay x rho^1/2) [N]; exponents beyond the lr [I].

    Weight decay gets no depth factor (so lr*wd scales as m_L^(alpha-1)) [I, unclear in the
    sources]. alpha defaults to 1; any alpha in [1/2, 1] is allowed.
    """
    hidden = row(
        init_std=R(width=-1 / 2),
        lr=R(width=-1, depth="alpha - 1"),
        eps=R(width=-1, depth="-alpha"),
        weight_decay=R(width=1),
    )
    return RuleTable(
        name="completed_p",
        alpha=alpha,
        rows=_with_sde(
            _rows(
                embedding=row(eps=R(width=-1)),
                hidden=hidden,
                branch_out=RESIDUAL_BRANCH,
                block_norms=row(lr=R(depth="alpha - 1"), eps=R(width=-1, depth="-alpha")),
                qk_norms=row(lr=R(depth="alpha - 1"), eps=R(depth="-alpha")),
                final_norm=row(eps=R(width=-1)),
                unembedding=row(init_std=R(width=-1), lr=R(width=-1), weight_decay=R(width=1)),
            )
        ),
        doc=completed_p.__doc__ or "",
    )


#: Built-in tables by name. Each builder takes ``alpha`` when its table has a depth rule.
TABLES: dict[str, Callable[..., RuleTable]] = {
    "sp": sp,
    "mup": mup,
    "depth_mup": depth_mup,
    "completep": completep,
    "completed_p": completed_p,
}
#: Tables whose residual exponent alpha a spec may set.
ALPHA_TABLES = frozenset({"depth_mup", "completep", "completed_p"})
