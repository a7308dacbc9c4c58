"""Command line: write the synthetic homepage NER dataset (character-offset JSON lines).

    python -m sener_jax.data.write_synthetic DIR [--seed 0] [--preset small|large|tiny]
"""
from __future__ import annotations

import argparse
from typing import Sequence

from sener_jax.data.synthetic import PRESETS, write_synthetic_dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    args = parser.parse_args(argv)
    for split, path in write_synthetic_dataset(args.directory, args.seed, args.preset).items():
        print(split, path)


if __name__ == "__main__":
    main()
