"""kafka-python computes each record batch's CRC-32C with the `crc32c` wheel, not in pure Python."""

from __future__ import annotations

import crc32c
import kafka.record.util as krutil
from kafka.record._crc32c import crc as crc32c_pure_python


def test_kafka_python_uses_the_crc32c_wheel() -> None:
    assert krutil.crc32c_c is crc32c.crc32c
    data = memoryview(b"batteryledger record batch" * 40)
    # same checksum as kafka-python's own pure-Python fallback: the wheel changes the speed, never the bytes
    assert krutil.calc_crc32c(data) == crc32c_pure_python(bytes(data)) == crc32c.crc32c(bytes(data))
