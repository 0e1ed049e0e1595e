"""Real servers for the tests: Debian's mosquitto and influxd, started on free loopback ports."""

pytest_plugins = ["tests.servers.influxdb", "tests.servers.mosquitto", "tests.store_backends"]
