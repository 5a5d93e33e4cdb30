"""`python -m lab.inputs.sample build --from ../shared/data`: (re)builds the embedded sample."""

from __future__ import annotations

import argparse
import os

from lab.errors import LabInputError
from lab.inputs.sample import MANIFEST, ROOT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.inputs.sample", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build the sample from a folder in the layout of ../shared/data")
    build_parser.add_argument("--from", dest="source", required=True, metavar="PATH",
                              help="a folder with flower_photos/, cifar10/ and weights/ (../shared/data)")
    build_parser.add_argument("--to", dest="root", default=ROOT, metavar="PATH",
                              help="where the sample goes (default: lab/inputs/sample)")
    arguments = parser.parse_args(argv)

    from lab.inputs.sample.build import build

    try:
        files = build(arguments.source, arguments.root)
    except LabInputError as error:
        parser.exit(2, f"error: {error}\n")
    size = sum(os.path.getsize(os.path.join(arguments.root, path)) for path in [*files, MANIFEST])
    print(f"wrote {len(files)} files and {MANIFEST}, {size / 2**20:.2f} MiB, to {os.path.abspath(arguments.root)}")


if __name__ == "__main__":
    main()
