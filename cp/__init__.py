"""cp: declarative experiment specs for hyperparameter transfer (Complete(d)P) in LLM training.

Rooms, bottom floor first: `cp.scaling` (rule tables, resolve), `cp.model`, `cp.optim`,
`cp.data`, `cp.train`, `cp.coord`, `cp.spec`, `cp.cli`. Importing `cp` imports no torch.
"""

__version__ = "0.1.0"
