"""The versioned data contract: Avro schemas, the pydantic models that mirror them, and the
compatibility rules every stage relies on."""
