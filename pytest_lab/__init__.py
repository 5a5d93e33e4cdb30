"""The lab's pytest plugin (`plugin`): options and hooks, the report's session state (`session`),
the datasets loaded before the first test (`datasets`), and what each test is (`cases`)."""
