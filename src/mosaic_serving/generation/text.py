"""Turns a stream of token ids into a stream of text pieces, honouring stop strings.

Byte-level tokenizers split multi-byte characters across tokens; a piece is released only
once its characters are complete, so the pieces always join to the full decoded text. Text
that might be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalText:
    """The text of one request's generated tokens, released piece by piece."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._token_ids: list[int] = []
        self._prefix_offset = 0  # start of the window decoded for context
        self._read_offset = 0  # tokens before this are already turned into text
        self.text = ""  # all decoded text (up to a stop string once one is found)
        self._released = 0  # characters of `text` already handed out
        self.stopped = False  # a stop string was found; nothing more will be released

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final (possibly "")."""
        self._token_ids.append(token_id)
        prefix = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._token_ids[self._prefix_offset :])
        if len(window) > len(prefix) and not window.endswith(REPLACEMENT):
            self.text += window[len(prefix) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._token_ids)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: flush incomplete characters and any held-back text."""
        if not self.stopped:
            prefix = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
            self.text += self._decode(self._token_ids[self._prefix_offset :])[len(prefix) :]
        return self._release(final=True)

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        cut = self._find_stop()
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            end = cut
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - self._held_back()
        piece = self.text[self._released : end]
        self._released = max(self._released, end)
        return piece

    def _find_stop(self) -> int | None:
        """Index of the earliest stop string in the unreleased text (released text holds none)."""
        hits = [i for i in (self.text.find(s, self._released) for s in self._stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        for length in range(min(max((len(s) for s in self._stop), default=1) - 1, len(self.text)), 0, -1):
            tail = self.text[-length:]
            if any(s.startswith(tail) for s in self._stop):
                return length
        return 0
