from catkd.engine.trainer import Trainer, RunResult

__all__ = ["Trainer", "RunResult"]
