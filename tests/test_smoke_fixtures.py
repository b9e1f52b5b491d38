from sqlmodel import select

from api.models import User


async def test_fixtures(database, redis, temporal_client):
    async with database.session() as s:
        s.add(User(name="a"))
        await s.commit()
        assert len((await s.exec(select(User))).all()) == 1
    assert await redis.ping()
    assert temporal_client.namespace == "default"
