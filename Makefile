.PHONY: demo test bench lint

demo:
	bash scripts/demo

test:
	bash scripts/test

lint:
	.venv/bin/ruff check .

# Benchmarks print figures; they are not part of the test suite.
bench:
	bash scripts/bench
