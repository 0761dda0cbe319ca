"""Device numbers: one value type instead of "major:minor" strings parsed again
wherever they are used, and the one place that knows the kernel's dev_t encoding.

Events and mount tables carry a device as its text (how mountinfo and fsev's
JSON spell it); Device.parse turns that text into numbers once (answers are
kept), and Device.kernel is the dev_t the BPF side sees.
"""

from __future__ import annotations

from dataclasses import dataclass

MINORBITS = 20  # the kernel-internal dev_t: major << 20 | minor (not the userspace encoding)
_MINOR_MASK = (1 << MINORBITS) - 1


@dataclass(frozen=True)
class Device:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> "Device":
        """From "major:minor"; ValueError if it is not that."""
        dev = _PARSED.get(text)
        if dev is None:
            major, sep, minor = text.partition(":")
            if not sep:
                raise ValueError(f"not a major:minor device number: {text!r}")
            dev = cls(int(major), int(minor))
            if len(_PARSED) > 4096:
                _PARSED.clear()
            _PARSED[text] = dev
        return dev

    @classmethod
    def from_kernel(cls, dev: int) -> "Device":
        """From a kernel-internal dev_t (super_block.s_dev)."""
        return cls(dev >> MINORBITS, dev & _MINOR_MASK)

    @property
    def kernel(self) -> int:
        """The kernel-internal dev_t, as BPF programs see s_dev."""
        return (self.major << MINORBITS) | self.minor

    def __str__(self) -> str:
        return f"{self.major}:{self.minor}"


_PARSED: dict[str, Device] = {}


def kernel_dev(major: int, minor: int) -> int:
    """Kernel-internal dev_t (MINORBITS = 20), as BPF programs see s_dev."""
    return Device(major, minor).kernel
