"""The browser door: WebRTC calls (signaling, the data channel, paced playout) and a scripted
caller for tests and `realtime call`."""
