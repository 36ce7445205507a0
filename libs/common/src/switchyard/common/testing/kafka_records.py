"""Records a Kafka client cannot parse, for tests: a header key that is not UTF-8, which
Kafka accepts (other clients write such keys) and aiokafka decodes strictly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Writes records to one partition, the one at index `bad` with a header key that is not
# UTF-8: Kafka takes any bytes there (other clients write them), aiokafka reads them
# strictly. Its pure-Python record builder, unlike its C one, encodes the key through the
# object's own `encode`, so a str subclass can hand over raw bytes. `batches` lists the
# number of records of each record batch, in order (each batch written before the next).
UNREADABLE_PRODUCER = textwrap.dedent("""
    import asyncio, json, os, sys
    os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"
    from aiokafka import AIOKafkaProducer

    class RawKey(str):
        def encode(self, *args, **kwargs):
            return b"bad\\xff\\xfekey"

    async def main(servers, topic, values, bad, batches, partition):
        producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=100)
        await producer.start()
        index = 0
        for size in batches:
            sent = []
            for value in values[index : index + size]:
                headers = [(RawKey("x"), b"v")] if index == bad else [("ok", b"v")]
                sent.append(await producer.send(topic, value, headers=headers, partition=partition))
                index += 1
            for delivery in sent:
                await delivery
        await producer.stop()

    servers, topic, bad, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    partition = int(sys.argv[5])
    values = [line.encode() for line in sys.stdin.read().split("\\n") if line]
    asyncio.run(main(servers, topic, values, bad, json.loads(batches), partition))
""")


def produce_with_unreadable(
    servers: str,
    topic: str,
    values: list[bytes],
    bad: int,
    batches: list[int] | None = None,
    partition: int = 0,
) -> None:
    """`values` to `partition` of `topic`, the one at `bad` unreadable; each in a record
    batch of its own unless `batches` groups them. Raises CalledProcessError if the
    producer fails."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            UNREADABLE_PRODUCER,
            servers,
            topic,
            str(bad),
            json.dumps(batches or [1] * len(values)),
            str(partition),
        ],
        input=b"\n".join(values),
        check=True,
        timeout=60,
    )
