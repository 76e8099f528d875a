"""The Publisher's producer settings and the CRC-32C implementation kafka-python really calls."""

from __future__ import annotations

import cProfile
import pstats

from kafka.record.default_records import DefaultRecordBatchBuilder

from streams.publisher import kafka_crc32c_native, producer_config
from streams.topics import TOPIC_MAX_MESSAGE_BYTES


def test_defaults_batch_without_giving_up_acks_all_or_idempotence() -> None:
    c = producer_config("127.0.0.1:9092", "mine-1")
    assert c["acks"] == "all" and c["enable_idempotence"] is True
    assert c["linger_ms"] == 50
    assert c["batch_size"] <= TOPIC_MAX_MESSAGE_BYTES // 2  # a full batch is never refused for size
    assert c["max_request_size"] >= c["batch_size"]
    assert c["client_id"] == "batteryledger-publisher-mine-1"
    assert producer_config("b:1", "f", linger_ms=0)["linger_ms"] == 0  # keyword arguments override


def test_record_batches_get_their_crc_from_the_crc32c_wheel() -> None:
    assert kafka_crc32c_native()
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=False, producer_id=1, producer_epoch=0,
        base_sequence=0, batch_size=1 << 20,
    )  # fmt: skip
    for i in range(10):
        builder.append(i, timestamp=1, key=b"k", value=b"v" * 500, headers=[("ce_id", b"x")])
    prof = cProfile.Profile()
    prof.enable()
    builder.build()
    prof.disable()
    called = {f"{mod}:{name}" for (mod, _, name) in pstats.Stats(prof).stats}  # type: ignore[attr-defined]
    assert any("crc32c._crc32c.crc32c" in c for c in called), called  # the C function, not _crc32c.py
    assert not any("kafka/record/_crc32c.py" in c for c in called)
