"""Evaluation stage (eval.evaluate), scorers (eval.scorers) and the collector (eval.collect)."""
