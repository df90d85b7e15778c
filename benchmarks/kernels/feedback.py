"""Microseconds of kernels/feedback.py (the delayed-parallel feedback on the device) against its
torch reference (a dozen small ops) and torch.compile; a launch-latency benchmark, its bytes
are negligible. Writes benchmarks/results/triton_feedback-<gpu>.json.

    python -m benchmarks.kernels.feedback
"""

import torch

from benchmarks.kernels import common


def main() -> None:
    args = common.parse_args(__doc__)
    device = common.require_gpu("benchmarks.kernels.feedback")
    from kernels.feedback import feedback, feedback_ref
    from realtime.decoding.gpu.step import TOKEN_LAYOUT as layout

    def kernel(sampled, speaks, audio_out, first, text_ended):
        return feedback(sampled, speaks, audio_out, first, text_ended, layout)

    def ref(sampled, speaks, audio_out, first, text_ended):
        return feedback_ref(sampled, speaks, audio_out, first, text_ended, layout)

    impls = common.implementations(kernel, ref)
    common.print_header()
    cases = []
    for B in common.DECODE_BATCHES:
        audio = torch.randint(0, layout.audio_vocab, (B, layout.audio_layers))
        text = torch.randint(0, layout.text_vocab, (B, 1))
        sampled = torch.cat((audio, text), dim=1).to(device)
        flags = [torch.rand(B, device=device) < 0.5 for _ in range(4)]
        got = kernel(sampled, *flags[:3], flags[3].clone())
        want = ref(sampled, *flags[:3], flags[3].clone())
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        nbytes = 2 * sampled.numel() * sampled.element_size() + 6 * B  # ids in and out, flags
        cases.append(common.compare(f"B={B}", nbytes, impls, sampled, *flags))
    common.write_results("feedback", cases, args)


if __name__ == "__main__":
    main()
