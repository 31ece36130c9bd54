"""The programmatic API: what the CLI does, for benchmarks and users' own code.

    import asyncio, getpass, socket
    from tsky.client import jobs
    from tsky.client.connect import connect
    from tsky.contract.ids import user_hash
    from tsky.spec.loader import load_pipeline
    from tsky.spec.settings import load_settings

    async def main() -> None:
        settings = load_settings()
        client = await connect(settings)
        me = getpass.getuser()
        pipeline = load_pipeline("train.yaml")
        [job_id] = await jobs.submit(client, settings, pipeline, user=me, user_hash=user_hash(me, socket.gethostname()))
        print(await jobs.wait(client, job_id))

    asyncio.run(main())

Modules: `connect` (the one client factory), `jobs` (launch, list, cancel, wait), `pools`, `logs` (the
log store), `infra` (enabled infra, catalog, plans; no Temporal), `clusters`, `child` (managed jobs as
child workflows of your own workflows), `embedded` (the local dev server and worker).
"""
