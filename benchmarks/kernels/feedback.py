"""Microseconds of kernels/feedback.py (the delayed-parallel feedback on the device) against its
torch reference (a dozen small ops) and torch.compile; a launch-latency benchmark, its bytes
are negligible. Writes benchmarks/results/triton_feedback-<gpu>.json.

    python -m benchmarks.kernels.feedback
"""

import torch

from benchmarks.kernels import common
from realtime.model import tokens


def main() -> None:
    args = common.parse_args(__doc__)
    device = common.require_gpu("benchmarks.kernels.feedback")
    from kernels.feedback import feedback, feedback_ref

    impls = common.implementations(feedback, feedback_ref)
    common.print_header()
    cases = []
    for B in common.DECODE_BATCHES:
        audio = torch.randint(0, tokens.AUDIO_LAYER_VOCAB, (B, tokens.AUDIO_LAYERS))
        text = torch.randint(0, tokens.TEXT_VOCAB_PADDED, (B, 1))
        sampled = torch.cat((audio, text), dim=1).to(device)
        flags = [torch.rand(B, device=device) < 0.5 for _ in range(4)]
        got = feedback(sampled, *flags[:3], flags[3].clone())
        want = feedback_ref(sampled, *flags[:3], flags[3].clone())
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        nbytes = 2 * sampled.numel() * sampled.element_size() + 6 * B  # ids in and out, flags
        cases.append(common.compare(f"B={B}", nbytes, impls, sampled, *flags))
    common.write_results("feedback", cases, args)


if __name__ == "__main__":
    main()
