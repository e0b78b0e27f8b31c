"""Reliability and security programme: crash, concurrency, corruption, hostile input,
permissions. See docs/reliability.md for what each test proves."""
