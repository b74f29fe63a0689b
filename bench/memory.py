"""Peak extra memory (RSS) of one forward+backward of log Z / the CRF NLL, or of the entropy,
each implementation in a fresh process so that allocator caches do not carry over.

    python bench/memory.py [entropy] [B T K]
"""
import resource
import os
import subprocess
import sys

IMPLS = ["ebm_ext", "reference", "pytorch-crf", "torch-struct"]

CHILD = r"""
import resource, sys, torch
import ebm_ext
from ebm_ext import _reference as ref
from anchors import pytorch_crf_layer, torch_struct_crf
what, impl, B, T, K = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
g = torch.Generator().manual_seed(0)
unary, trans = torch.randn(B, T, K, generator=g), torch.randn(K, K, generator=g)
start, end = torch.randn(K, generator=g), torch.randn(K, generator=g)
gold = torch.randint(0, K, (B, T), generator=g)
if what == "entropy":
    params = [x.requires_grad_() for x in (unary, trans, start, end)]
    fn = {"ebm_ext": lambda: ebm_ext.chain_entropy(unary, trans, None, start, end),
          "torch-struct": lambda: torch_struct_crf(unary, trans, start, end).entropy}[impl]
    run = lambda: fn().sum().backward()
elif impl == "pytorch-crf":
    crf = pytorch_crf_layer(trans, start, end)
    emissions = (-unary).requires_grad_()
    run = lambda: (-crf(emissions, gold, reduction="sum")).backward()
else:
    params = [x.requires_grad_() for x in (unary, trans, start, end)]
    fn = {"ebm_ext": ebm_ext.chain_log_partition, "reference": ref.chain_log_partition,
          "torch-struct": lambda u, t, l, s, e: torch_struct_crf(u, t, s, e).partition}[impl]
    run = lambda: fn(unary, trans, None, start, end).sum().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""


def main(what="logz", shape=(1024, 50, 25)):
    title = "entropy" if what == "entropy" else "log Z / NLL"
    print(f"| (B, T, K) = {tuple(shape)} | peak extra RSS, {title} forward+backward |")
    print("| --- | ---: |")
    for impl in (["ebm_ext", "torch-struct"] if what == "entropy" else IMPLS):
        # The child imports bench/anchors.py: bench/ is on its path (it runs from the repository).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, ["bench", os.environ.get("PYTHONPATH")]))}
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, what, impl,
                              *map(str, shape)],
                             capture_output=True, text=True, check=True, env=env)
        print(f"| {impl} | {float(out.stdout.strip().splitlines()[-1]):.1f} MiB |")


if __name__ == "__main__":
    args = sys.argv[1:]
    what = args.pop(0) if args and args[0] == "entropy" else "logz"
    main(what, tuple(int(a) for a in args[:3]) if len(args) >= 3 else (1024, 50, 25))
