"""GB/s of kernels/swiglu.py against its torch reference and torch.compile, on the released
fused fc_1/fc_2 output (2 x 4864 wide) for decode batches and a prefill. Writes
benchmarks/results/triton_swiglu-<gpu>.json.

    python -m benchmarks.kernels.swiglu [--dtype bf16]
"""

import torch

from benchmarks.kernels import common


def main() -> None:
    args = common.parse_args(__doc__)
    device = common.require_gpu("benchmarks.kernels.swiglu")
    from kernels.swiglu import swiglu, swiglu_ref

    dtype, hidden = common.DTYPES[args["dtype"]], common.RELEASED.intermediate_size
    impls = common.implementations(swiglu, swiglu_ref)
    common.print_header()
    cases = []
    for rows in [*common.DECODE_BATCHES, 512]:
        x = 4 * torch.randn(rows, 2 * hidden, device=device, dtype=dtype)
        torch.testing.assert_close(swiglu(x), swiglu_ref(x), rtol=2**-7, atol=1e-3)
        nbytes = 3 * rows * hidden * x.element_size()  # both halves in, the product out
        cases.append(common.compare(f"rows={rows}", nbytes, impls, x))
    common.write_results("swiglu", cases, args)


if __name__ == "__main__":
    main()
