#!/bin/sh
# Single-node KRaft Kafka broker of the e2e cluster (image built by scripts/image.sh services).
# Advertises the pod's own address ($POD_IP, downward API): the cluster has no DNS. State in
# /data (a volume); the root filesystem may be read-only.
set -eu
: "${POD_IP:?POD_IP is required (downward API status.podIP)}"
: "${KAFKA_PARTITIONS:=4}" "${KAFKA_HEAP_OPTS:=-Xms256m -Xmx768m}"
mkdir -p /data/kafka /tmp/kafka
cat >/tmp/kafka/server.properties <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://$POD_IP:9092
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:9093
log.dirs=/data/kafka
num.partitions=$KAFKA_PARTITIONS
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=2
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
run() {
    # shellcheck disable=SC2086
    exec_or_run="$1"; shift
    $exec_or_run java $KAFKA_HEAP_OPTS -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile=/opt/kafka/log4j2.xml -Djava.io.tmpdir=/tmp \
        -cp '/opt/kafka/libs/*' "$@"
}
if [ ! -f /data/kafka/meta.properties ]; then
    run "" kafka.tools.StorageTool format --standalone \
        --cluster-id "$(run "" kafka.tools.StorageTool random-uuid | tail -n 1)" \
        --config /tmp/kafka/server.properties
fi
run exec kafka.Kafka /tmp/kafka/server.properties
