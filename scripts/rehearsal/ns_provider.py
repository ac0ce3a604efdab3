"""FakeMultiNodeProvider whose nodes are `ray start` processes in private namespaces (node.sh):
autoscaling AND private disks. Config: provider: {type: external,
module: ns_provider.NamespaceNodeProvider, node_sh: /path/node.sh, gcs_address: ip:port,
ip_prefix: "127.0.0.", first_host: 31, use_node_id_as_ip: true, disable_node_updaters: true,
disable_launch_config_check: true}. Head must run with RAY_FAKE_CLUSTER=1 and see $BASE."""

import json
import os
import signal
import subprocess

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)


class NamespaceNodeProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        resources = dict(resources)
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            next_id = self._next_hex_node_id()
            n = self._next_node_id
            pc = self.provider_config
            ip = f"{pc.get('ip_prefix', '127.0.0.')}{pc.get('first_host', 31) + n}"
            cpus = resources.pop("CPU", 0)
            resources.pop("object_store_memory", None)
            env = dict(
                os.environ,
                RAY_OVERRIDE_NODE_ID_FOR_TESTING=next_id,
                RAY_CLOUD_INSTANCE_ID=next_id,
                RAY_NODE_TYPE_NAME=node_type,
                RAY_OVERRIDE_LABELS=json.dumps(labels or {}),
            )
            log = open(os.path.join(os.environ["BASE"], f"as{n}.log"), "w")  # noqa: SIM115 - the node's log, held by its process
            proc = subprocess.Popen(
                [
                    pc["node_sh"],
                    f"as{n}",
                    ip,
                    str(30000 + 1000 * n),
                    "--address",
                    pc["gcs_address"],
                    "--num-cpus",
                    str(int(cpus)),
                    "--resources",
                    json.dumps(resources),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            all_tags = {
                TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                TAG_RAY_USER_NODE_TYPE: node_type,
                TAG_RAY_NODE_NAME: next_id,
                TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
            }
            all_tags.update(tags)
            self._nodes[next_id] = {"tags": all_tags, "node": proc}

    def _terminate_node(self, node):
        proc = node["node"]
        proc.send_signal(signal.SIGKILL)  # unshare --kill-child: the whole node goes
        proc.wait()
