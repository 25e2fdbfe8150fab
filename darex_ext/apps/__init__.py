"""Applications over the library: the `darex` command line (`cli`, `commands`), the kernel
benchmark (`bench`, `bench_cases`, `bench_memory`) and the demo task and reproduction (`demo`,
`demo_task`, `demo_repro`). Nothing below `apps` imports it (docs/architecture.md)."""
