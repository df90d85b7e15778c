"""The OpenAI Realtime door: `GET /v1/realtime` WebSockets in either generation of the protocol."""
