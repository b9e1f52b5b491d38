"""The container service answers the Docker API, and a locked-down Worker container runs on it."""

import docker

# Prints 42 and the user the process runs as (the rootfs has no `id`).
UID_AND_ANSWER = (
    "echo $((6 * 7)); "
    'while read -r key uid _; do [ "$key" = Uid: ] && echo "$uid"; done < /proc/self/status; true'
)


def test_a_network_less_unprivileged_container_runs(docker_client: docker.DockerClient, tiny: str):
    output = docker_client.containers.run(
        tiny,
        ["/bin/sh", "-c", UID_AND_ANSWER],
        user="1000:1000",
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit="128m",
        pids_limit=32,
        labels={"orchestrator.test": "docker-api"},
        remove=True,
    )
    assert output.decode().split() == ["42", "1000"]
