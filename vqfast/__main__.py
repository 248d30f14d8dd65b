"""Command line: `python -m vqfast info | bench [--quick]`."""
from __future__ import annotations

import argparse
import platform

import torch

import vqfast


def info() -> None:
    print(f"vqfast {vqfast.__version__}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    for name, status in vqfast.backends().items():
        print(f"  {name:<10} {'yes' if status['available'] else 'no ':<4} {status['detail']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vqfast")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="what is built and usable")
    bench = sub.add_parser("bench", help="time every op per backend against its reference")
    bench.add_argument("--quick", action="store_true", help="small shapes, about a minute")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        info()
    elif args.cmd == "bench":
        from vqfast import quickbench
        info()
        quickbench.run(quick=args.quick)


if __name__ == "__main__":
    main()
