"""GB/s of kernels/add_rmsnorm.py (residual add + RMSNorm) against its torch reference and
torch.compile, at the released width (896) for decode batches and a prefill. Writes
benchmarks/results/triton_add_rmsnorm-<gpu>.json.

    python -m benchmarks.kernels.add_rmsnorm [--dtype bf16]
"""

import torch

from benchmarks.kernels import common


def main() -> None:
    args = common.parse_args(__doc__)
    device = common.require_gpu("benchmarks.kernels.add_rmsnorm")
    from kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_ref

    dtype, C, eps = common.DTYPES[args["dtype"]], common.RELEASED.n_embd, common.RELEASED.norm_eps
    weight = 1 + 0.1 * torch.randn(C, device=device, dtype=dtype)
    impls = common.implementations(add_rmsnorm, add_rmsnorm_ref)
    common.print_header()
    cases = []
    for rows in [*common.DECODE_BATCHES, 512]:
        x, r = (torch.randn(rows, C, device=device, dtype=dtype) for _ in range(2))
        inputs = (x, r, weight, eps)
        for got, want in zip(add_rmsnorm(*inputs), add_rmsnorm_ref(*inputs), strict=True):
            torch.testing.assert_close(got, want, rtol=2**-7, atol=1e-3)
        nbytes = (4 * rows * C + C) * x.element_size()  # x, r in; y, s out; the weight
        cases.append(common.compare(f"rows={rows}", nbytes, impls, *inputs))
    common.write_results("add_rmsnorm", cases, args)


if __name__ == "__main__":
    main()
