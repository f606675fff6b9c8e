"""A sample Python function for Ember's demo: greets whoever the event names."""

import os
import platform


def handler(event, context):
    name = event.get("name", "world")
    print(f"greeting {name} from request {context.aws_request_id}")
    return {
        "greeting": f"Hello, {name}!",
        "function": context.function_name,
        "memory_mb": context.memory_limit_in_mb,
        "python": platform.python_version(),
        "kernel": os.uname().release,
    }
