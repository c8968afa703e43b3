"""The composition package: the one place that knows every service and wires them into a
platform (the operator CLI, the dev stack, the demo seed, the backup drill, the fakes, the
worker's tasks and schedule, every service's migrations). The kernel (`services.common`)
imports none of this, and no service imports it."""
