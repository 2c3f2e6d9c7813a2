"""Redis side: document keys, encoding for HASH and JSON storage, pipelined writes."""
