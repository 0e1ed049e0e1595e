#!/bin/bash
# Runs once, inside the influxdb:2.7 container, right after its first setup (empty data volume),
# with the influx CLI already logged in with the admin token. It makes InfluxDB 2.x speak what
# fmc speaks: InfluxQL on /query and v1 writes on /write, both addressed by a database name.
#   1. DBRP mapping: database $FMC_INFLUX_DATABASE, retention policy autogen -> the setup bucket
#   2. a v1 user that may only write that bucket (gateways: [sink] username/password, dialect v1)
#   3. a v1 user that may only read it (Grafana's datasource)
#   4. one-year shard groups: daily rollups are few points in many series, and a year's query over
#      weekly shards costs ten times more (docs/central.md, "InfluxDB for the central store")
# To run it again on an existing volume: docs/deploy.md ("DBRP mapping").
set -euo pipefail

bucket_id="${DOCKER_INFLUXDB_INIT_BUCKET_ID:?the influxdb image exports it after setup}"
db="${FMC_INFLUX_DATABASE:-fmc}"

influx bucket update --id "$bucket_id" --shard-group-duration 52w
influx v1 dbrp create --db "$db" --rp autogen --bucket-id "$bucket_id" --default
influx v1 auth create --username "$FMC_AGENT_USER" --password "$FMC_AGENT_PASSWORD" \
  --write-bucket "$bucket_id" --description "fmc agents: write $db"
influx v1 auth create --username "$FMC_GRAFANA_USER" --password "$FMC_GRAFANA_PASSWORD" \
  --read-bucket "$bucket_id" --description "Grafana: read $db"
echo "fmc: database '$db' mapped to bucket $bucket_id; v1 users $FMC_AGENT_USER (write), $FMC_GRAFANA_USER (read)"
