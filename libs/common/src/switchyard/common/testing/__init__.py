"""Test support shared by every package's suites: fixtures that attach to the real Kafka
broker and PostgreSQL server named by `KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL`
(started by `make infra-up`), throwaway databases and topic prefixes, and polling with a
deadline instead of fixed sleeps. Loaded into pytest through the `pytest11` entry point."""
