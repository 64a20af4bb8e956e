"""The local stack: Apache Kafka (KRaft), the schema registry (with its PostgreSQL), embedded
ClickHouse and, with alerting enabled, Alertmanager and a webhook receiver, installed from package
registries and run as plain processes by `onfinish stack`."""
