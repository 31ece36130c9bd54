"""What tsky can use and what it would choose, computed in-process (no Temporal): the enabled infra, the
catalog's offers and prices, and the plan a launch would make (the "Considered resources" table)."""

from tsky.ops.catalog import CATALOG_CLOUDS as CATALOG_CLOUDS
from tsky.ops.catalog import CatalogError as CatalogError
from tsky.ops.catalog import Offer as Offer
from tsky.ops.catalog import bundled_catalog as bundled_catalog
from tsky.ops.catalog import load_catalog as load_catalog
from tsky.ops.catalog import write_cloud_catalog as write_cloud_catalog
from tsky.ops.infra_check import INFRA_NAMES as INFRA_NAMES
from tsky.ops.infra_check import EnabledInfra as EnabledInfra
from tsky.ops.infra_check import InfraStatus as InfraStatus
from tsky.ops.infra_check import check_infra as check_infra
from tsky.ops.planning import INFRA_ALIASES as INFRA_ALIASES
from tsky.ops.planning import detect_host as detect_host
from tsky.ops.planning import infra_offers as infra_offers
from tsky.ops.planning import plan_for_task as plan_for_task
