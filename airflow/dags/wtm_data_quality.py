"""Hourly: check the lake against the nodes. For every partition, the rows the lake's tables hold
(windows' requests, late, invalid, raw events) must lie between what the nodes said they had
published just before the lake was read and just after; and what was published can never exceed
what came in (events in = windows + late + what is still open; invalid in = invalid out). Fails
loudly, listing every disagreement."""

from airflow.sdk import task

import wtm_upkeep

with wtm_upkeep.dag("wtm_data_quality", "0 * * * *", __doc__, retries=0, tags=("quality",)) as dag:

    @task
    def check_lake_against_nodes():
        urls = [u.strip() for u in wtm_upkeep.var("wtm_node_urls").split(",") if u.strip()]
        errors = []
        for url in urls:  # any node answers for the cluster: the first that does is enough
            try:
                before = wtm_upkeep.overview(url)
                break
            except OSError as e:
                errors.append(f"{url}: {e}")
        else:
            raise RuntimeError(f"no node answered: {errors}")
        lake = wtm_upkeep.lake_location()
        try:
            held = wtm_upkeep.partition_sums(lake)
        except Exception as e:  # noqa: BLE001 - an unreadable lake is a failed check, said plainly
            raise RuntimeError(f"the lake {lake} cannot be read through its logs: {e}") from e
        after = wtm_upkeep.overview(url)
        problems = wtm_upkeep.quality_problems(before, held, after)
        if problems:
            raise RuntimeError("the lake disagrees with the nodes:\n  " + "\n  ".join(problems))
        total = {m: sum(p.get(m, 0) for p in held.values()) for m in wtm_upkeep.MEASURES}
        print(f"lake {lake} agrees with the nodes: {total}")
        return total

    check_lake_against_nodes()
