"""Error messages stay short enough for every client, whatever the client sent."""

from __future__ import annotations

from gateway.core.errors import MAX_MESSAGE_CHARS, InvalidInputError, clipped


def test_a_long_message_is_cut_and_says_how_long_it_was() -> None:
    error = InvalidInputError("x" * 20_000)
    assert error.message.startswith("x" * MAX_MESSAGE_CHARS)
    assert error.message.endswith("...(20000 characters)")
    assert str(error) == error.message


def test_a_short_value_is_quoted_whole() -> None:
    assert clipped("INPUT0") == "INPUT0"
    assert clipped("a" * 64) == "a" * 64
    assert clipped("a" * 65) == "a" * 64 + "...(65 characters)"
