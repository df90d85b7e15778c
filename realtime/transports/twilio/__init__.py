"""The phone door: Twilio Media Streams calls."""
