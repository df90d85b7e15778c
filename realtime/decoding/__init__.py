"""Decoding: delayed-parallel steps (one text and seven audio tokens a step), sampling, one
request end to end, and the GPU step on our kernels (gpu/)."""
