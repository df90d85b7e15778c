"""Validation of everything a client sends (realtime/transports/webrtc/protocol.py)."""

import json

import pytest

from realtime.transports.webrtc.protocol import (
    MAX_MESSAGE_BYTES,
    Interrupt,
    ProtocolError,
    Settings,
    parse_client_message,
    parse_offer,
)

AUDIO_OFFER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def test_valid_messages():
    assert parse_client_message('{"type": "interrupt"}') == Interrupt()
    settings = '{"type": "settings", "vad_aggressiveness": 1, "max_answer_ms": 4000}'
    assert parse_client_message(settings) == Settings(1, 4000)
    assert parse_client_message('{"type": "settings"}') == Settings()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"type": "interrupt"}', "bad_message"),
        ("interrupt", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"kind": "interrupt"}', "unknown_type"),
        ('{"type": "interrupt", "now": true}', "bad_field"),
        ('{"type": "settings", "vad_aggressiveness": true}', "bad_value"),
        ('{"type": "settings", "vad_aggressiveness": 1.5}', "bad_value"),
        ('{"type": "settings", "max_answer_ms": 10}', "bad_value"),
        (json.dumps({"type": "interrupt", "x": "y" * MAX_MESSAGE_BYTES}), "too_large"),
        ("[" * 30_000 + "]" * 30_000, "bad_json"),  # (json raises RecursionError for it)
    ],
)
def test_invalid_messages_say_what_is_wrong(raw, code):
    with pytest.raises(ProtocolError) as err:
        parse_client_message(raw)
    assert err.value.code == code and str(err.value)


def offer(sdp: str) -> bytes:
    return json.dumps({"type": "offer", "sdp": sdp}).encode()


def test_a_deeply_nested_offer_is_bad_json():
    with pytest.raises(ProtocolError) as err:
        parse_offer(b"[" * 30_000 + b"]" * 30_000)
    assert err.value.code == "bad_json"


def test_offer_needs_a_sending_audio_section():
    assert parse_offer(offer(AUDIO_OFFER)) == AUDIO_OFFER
    for sdp, code in [
        ("hello", "bad_sdp"),
        ("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n", "no_audio"),
        (AUDIO_OFFER + "a=recvonly\r\n", "no_audio"),
        (AUDIO_OFFER.replace("audio 9", "audio 0"), "no_audio"),
    ]:
        with pytest.raises(ProtocolError) as err:
            parse_offer(offer(sdp))
        assert err.value.code == code
