"""The local stack: Apache Kafka (KRaft), the schema registry (with its PostgreSQL) and embedded
ClickHouse, installed from package registries and run as plain processes by `onfinish stack`."""
