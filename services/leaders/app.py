from services.common.app import create_service_app

from .api import routers

app = create_service_app(
    "leaders",
    routers,
    title="Leaders",
    description="Sign-in, group leaders, pickup points and groups",
)
