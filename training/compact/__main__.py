"""``python -m training.compact RECIPE [options]`` = ``mulcot distill compact RECIPE [options]``."""

from training.cli import compact_cmd

if __name__ == "__main__":  # pragma: no cover
    compact_cmd()
