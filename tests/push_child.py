"""What the SIGKILL test's children run: push, with the S3 environment of the test
(a fork server started earlier may lack it). Imports push and nothing heavier."""

import os

from recsys.components.push.push import push


def push_with_environment(environment: dict[str, str], **arguments) -> None:
    os.environ.update(environment)
    push(**arguments)
