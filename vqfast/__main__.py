"""Command line: `python -m vqfast info | bench [--quick] | demo | convert | train | eval | cache`."""
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
    bench = sub.add_parser("bench", help="time every op beside the plain-PyTorch code a user would run instead")
    bench.add_argument("--quick", action="store_true", help="small shapes, about a minute")
    demo = sub.add_parser("demo", help="MaskGIT inpainting end to end: train (or load) tiny models, write a PNG")
    demo.add_argument("--out", default="maskgit_demo.png", help="PNG grid to write")
    demo.add_argument("--cache-dir", default=None, help="checkpoint cache (default ~/.cache/vqfast, env VQFAST_CACHE)")
    demo.add_argument("--retrain", action="store_true", help="ignore cached checkpoints")
    demo.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    conv = sub.add_parser("convert", help="an official checkpoint -> a vqfast checkpoint (safetensors + JSON)")
    conv.add_argument("system", help="taming-vqgan, rqvae, put, mqvae or stackformer")
    conv.add_argument("src", help="the official checkpoint (.ckpt/.pt/.pth/.safetensors, or a .tar.gz release)")
    conv.add_argument("out", help="output path without suffix: writes OUT.safetensors and OUT.json")
    conv.add_argument("--member", default=None, help="the checkpoint file inside a .tar.gz release")
    conv.add_argument("--resolution", type=int, default=256, help="input resolution of the tokenizer (default 256)")
    conv.add_argument("--ratio", type=float, default=None,
                      help="mqvae: the kept share (topk_ratio) it was trained with (default 0.30)")
    from vqfast.train import cli as train_cli
    train_cli.add_train_parser(sub)
    train_cli.add_eval_parser(sub)
    train_cli.add_cache_parser(sub)
    args = parser.parse_args(argv)
    if args.cmd == "info":
        info()
    elif args.cmd == "bench":
        from vqfast import quickbench
        info()
        quickbench.run(quick=args.quick)
    elif args.cmd == "convert":
        from vqfast.convert import convert
        options = {} if args.system == "stackformer" else {"resolution": args.resolution}
        if args.ratio is not None:
            options["ratio"] = args.ratio
        result = convert(args.system, args.src, args.out, member=args.member, **options)
        for stage, part in (result.items() if isinstance(result, dict) else [(None, result)]):
            out = args.out if stage is None else f"{args.out}-{stage}"
            print(f"{args.system}: mapped {part.mapped} tensors into {type(part.model).__name__} "
                  f"({sum(p.numel() for p in part.model.parameters()) / 1e6:.1f}M parameters), skipped "
                  f"{len(part.skipped)} training-only tensors; wrote {out}.safetensors and {out}.json")
    elif args.cmd == "demo":
        from vqfast import demo
        info()
        demo.run(cache_dir=args.cache_dir, out=args.out, retrain=args.retrain, budget_minutes=args.minutes)
    elif args.cmd == "train":
        train_cli.run_train(args)
    elif args.cmd == "eval":
        train_cli.run_eval(args)
    elif args.cmd == "cache":
        train_cli.run_cache(args)


if __name__ == "__main__":
    main()
