"""Peak extra memory (RSS) of one forward+backward of log Z / the CRF NLL, each implementation
in a fresh process so that allocator caches do not carry over.

    python bench/memory.py [B T K]
"""
import resource
import subprocess
import sys

IMPLS = ["ebm_ext", "reference", "pytorch-crf", "torch-struct"]

CHILD = r"""
import resource, sys, torch
sys.path.insert(0, "bench")
import ebm_ext
from ebm_ext import _reference as ref
from anchors import pytorch_crf_layer, torch_struct_crf
impl, B, T, K = sys.argv[1], *map(int, sys.argv[2:5])
g = torch.Generator().manual_seed(0)
unary, trans = torch.randn(B, T, K, generator=g), torch.randn(K, K, generator=g)
start, end = torch.randn(K, generator=g), torch.randn(K, generator=g)
gold = torch.randint(0, K, (B, T), generator=g)
if impl == "pytorch-crf":
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


def main(shape=(1024, 50, 25)):
    print(f"| (B, T, K) = {tuple(shape)} | peak extra RSS, log Z / NLL forward+backward |")
    print("| --- | ---: |")
    for impl in IMPLS:
        out = subprocess.run([sys.executable, "-c", CHILD, impl, *map(str, shape)],
                             capture_output=True, text=True, check=True)
        print(f"| {impl} | {float(out.stdout.strip().splitlines()[-1]):.1f} MiB |")


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:4]) if len(sys.argv) >= 4 else (1024, 50, 25))
