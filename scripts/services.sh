#!/usr/bin/env bash
# Start the local services the tests use (PostgreSQL, Redis, MariaDB, RabbitMQ) when they are not already up.
# Docker users run `docker compose up -d postgres redis` instead. The tests only read these: they make (and remove)
# their own databases, a redis-server of their own, and a RabbitMQ vhost of their own.
set -euo pipefail

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
# mysqladmin ping succeeds whenever the server answers, even if it refuses this login
mariadb_up() { mysqladmin -h 127.0.0.1 -P 3306 --connect-timeout=2 ping >/dev/null 2>&1; }
# the AMQP port answers (rabbitmqctl needs the Erlang cookie; the tests' vhost is made with it, as root in CI)
rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
fi

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  fi
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
  redis_up || { echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
fi

# MariaDB: the SQL connector's second engine (tests/integration/test_subject_only.py, test_sql_engines.py,
# test_generated_schema.py); in CI (CI=true) the tests fail, not skip, when it is missing
if ! mariadb_up; then
  echo "starting MariaDB" >&2
  if [ -x /etc/init.d/mariadb ]; then
    /etc/init.d/mariadb start >/dev/null 2>&1 || true
  fi
  if ! mariadb_up && command -v mariadbd-safe >/dev/null; then  # no init script, or not allowed to use it
    (mariadbd-safe --bind-address=127.0.0.1 --port=3306 >/dev/null 2>&1 &)
  fi
  for _ in $(seq 1 30); do mariadb_up && break; sleep 1; done
  mariadb_up || { echo "MariaDB is not reachable on 127.0.0.1:3306" >&2; exit 1; }
fi

# RabbitMQ: the second broker (tests/integration/test_worker_redis.py, test_no_poison.py, test_namespaces.py,
# test_rabbitmq_broker.py run on it too); in CI (CI=true) the tests fail, not skip, when it is missing
if ! rabbitmq_up && command -v rabbitmq-server >/dev/null; then
  echo "starting RabbitMQ" >&2
  if [ -x /etc/init.d/rabbitmq-server ]; then
    /etc/init.d/rabbitmq-server start >/dev/null 2>&1 || true
  fi
  if ! rabbitmq_up; then  # no init script, or not allowed to use it
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 60); do rabbitmq_up && break; sleep 1; done
fi
if ! rabbitmq_up; then
  if [ "${CI:-}" = "true" ]; then
    echo "RabbitMQ is not reachable on 127.0.0.1:5672 (apt-get install rabbitmq-server)" >&2
    exit 1
  fi
  echo "RabbitMQ is not reachable on 127.0.0.1:5672: its tests will be skipped" >&2
fi
