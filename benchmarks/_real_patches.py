"""Real SEN12MS-CR patches from public GitHub repositories: where each comes from, and fetching them.

    python -m benchmarks._real_patches                      # download into benchmarks/.cache/real/sen12mscr
    python -m benchmarks._real_patches --mirror /work/.mirror   # copy from local git mirrors instead

SEN12MS-CR (Ebel et al., IEEE TGRS 2020, https://mediatum.ub.tum.de/1554803) is published under
CC-BY 4.0; the archives cannot be downloaded on the build machines. A few of its patches sit, as the
original files (uncompressed 256 x 256 GeoTIFFs, 13 x uint16 for S2, 2 x float32 dB for S1), in
public repositories of cloud-removal projects. :data:`SOURCES` lists every one used here with the
repository, the commit, the path and the SHA-256 of the file; :func:`fetch` writes them into the
SEN12MS-CR layout (``<season>_<modality>/<modality>_<roi>/<season>_<modality>_<roi>_p<patch>.tif``)
under ``benchmarks/.cache/real/sen12mscr`` (git-ignored) and refuses a file whose SHA-256 differs.

Licences: the imagery is SEN12MS-CR's (CC-BY 4.0, cite Ebel et al. 2020); the hosting repositories'
own licences are in :data:`REPOSITORIES` (one has none). The files are not committed to this
project: only this list, the script and the measured tables are.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import cache_dir
from sscr.fsutil import atomic_path

#: repository -> (commit every file below was read at, the repository's licence)
REPOSITORIES: dict[str, tuple[str, str]] = {
    "Oriolac/cloud-removal": ("4c4bcc0e73b7c6b2b1759d5ac262bde0f9a6c43b", "none stated (no LICENSE file)"),
    "zhangcy23/Mamba-SCR": ("730566bf8deab455b9450a2e5cb29e83f789b468", "Apache-2.0"),
    "CodyKurpanek/dSen2CR_DSP": ("0c4ed2b91a2c8f68e4de2d1cffdb98dab037c6bc", "GPL-3.0"),
}
DATASET_LICENCE = "CC-BY 4.0 (SEN12MS-CR, Ebel et al. 2020, doi:10.14459/2020mp1554803)"


@dataclass(frozen=True)
class RealPatch:
    """One file of SEN12MS-CR as found in a public repository."""

    repo: str
    path: str
    modality: str  # s1 | s2 | s2_cloudy
    season: str  # e.g. ROIs1868_summer
    roi: int
    patch: int
    sha256: str

    @property
    def commit(self) -> str:
        """The commit the file was read at."""
        return REPOSITORIES[self.repo][0]

    @property
    def url(self) -> str:
        """Where the file can be downloaded (raw.githubusercontent.com at :attr:`commit`)."""
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path}"

    def relpath(self) -> Path:
        """Its place in the SEN12MS-CR layout."""
        mod = self.modality
        return Path(f"{self.season}_{mod}") / f"{mod}_{self.roi}" / f"{self.season}_{mod}_{self.roi}_p{self.patch}.tif"


_ROWS = [
    ("Oriolac/cloud-removal", "eda/notebooks/data/ROIs1158_spring_s1_100_p102.tif", "s1", "ROIs1158_spring", 100, 102, "4bea9d3abce684f71151dc5001b6f86527d943f9993d8019d2af10f238818395"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p139.tif", "s2", "ROIs1970_fall", 136, 139, "0f91a49ae6f5955983cbb392258174aafd4adc6b3f6946b422462662bb6f8658"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p140.tif", "s2", "ROIs1970_fall", 136, 140, "b0cce06986c95059bdc45604e25efe3670401ae7f35354c078658888c47e1566"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p280.tif", "s2", "ROIs1970_fall", 136, 280, "e1fbedad4b86309381c61bfbceccf1caa51da60f1e7fc1b17f0b085be4a23435"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p281.tif", "s2", "ROIs1970_fall", 136, 281, "3ab2d1bcd07c1050d62ea04de20f501c7660a32f1bee52c318a802c4d6dc2fa6"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p282.tif", "s2", "ROIs1970_fall", 136, 282, "a7f9d93d309163754caec7557566bc555c80a02da6d639ad05319fb51884c3db"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p308.tif", "s2", "ROIs1970_fall", 136, 308, "726b3199cd81b8e0ead6f2eb59dedd8cb52dedb993aaafacaef71a352c90dbbb"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p309.tif", "s2", "ROIs1970_fall", 136, 309, "de5a8bed14659519e03be9f4db138606cd1434486a051ba50035b724f042ec8d"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p310.tif", "s2", "ROIs1970_fall", 136, 310, "df2d184661223edaf2257cc5e1db36a82e0947b27cb5bed97b161dd2336c50ee"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p311.tif", "s2", "ROIs1970_fall", 136, 311, "4beab3118efc2f62bdb83c5d715111b283355e4d4272a00251fae8cb522b8e21"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p312.tif", "s2", "ROIs1970_fall", 136, 312, "4d444645c75668a772b114f325ede1a57451e06d5201e248c54310a9ae06abd4"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p315.tif", "s2", "ROIs1970_fall", 136, 315, "d600252553b569132e2056c2320b5fa6a1d05c7604e4a51b675376e1c6d9a17b"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_136_p316.tif", "s2", "ROIs1970_fall", 136, 316, "4dc255eae6d3cd95951ac0399365a4023e96ea76d152f1f868a616ab09a3a3ba"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_85_p492.tif", "s2", "ROIs1970_fall", 85, 492, "a35423989e7879455d17623750d90ffe4c20abcb063f30e2b38f51f65594adc1"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_85_p753.tif", "s2", "ROIs1970_fall", 85, 753, "042cae6edd34728cdbdad724191c78c1a749765712f87cf17e01e6b4f49a2256"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2/ROIs1970_fall_s2_85_p782.tif", "s2", "ROIs1970_fall", 85, 782, "ccc78eec14a6130202bb008cc3e2c2789663a533cececad798e57c021897fa10"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p139.tif", "s2_cloudy", "ROIs1970_fall", 136, 139, "dfa68f4fe4508b1b563c89c20c443cc01fe5a952ef4033757e2fc14d24f3d65d"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p140.tif", "s2_cloudy", "ROIs1970_fall", 136, 140, "829e0aedafcf0dee0c32a350e69d89fe4ba0ed8abd9ce1e13f7fc1e971d28b23"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p280.tif", "s2_cloudy", "ROIs1970_fall", 136, 280, "abdcf96b7bd393d549f6fa054f253d1ddae802a3a4c8cf93e773200db843db30"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p281.tif", "s2_cloudy", "ROIs1970_fall", 136, 281, "bde8debfebd066b66b99385cf881c62abf78433836006106e24f35755a85cf9d"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p282.tif", "s2_cloudy", "ROIs1970_fall", 136, 282, "5cd4f1dbfd35e7636c4f2909138f12e3dbb2a21cb2bf97ea5e6b6932a44255c6"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p308.tif", "s2_cloudy", "ROIs1970_fall", 136, 308, "164233935fdaed35a133dcecd6d63cb8d7ead8ca81923b02f4b25ed26e3aa3bf"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p309.tif", "s2_cloudy", "ROIs1970_fall", 136, 309, "3ae0ba08e768d4e1f83987b687d945ee02d4ad58217389e88603848a966a3a3f"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p310.tif", "s2_cloudy", "ROIs1970_fall", 136, 310, "4b065e4d09b81d8a851ceb769497e5f901759749e7ef45b76c9aff533427fdc8"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p311.tif", "s2_cloudy", "ROIs1970_fall", 136, 311, "0a9e999e31c8cf8f9fa27a1e4b786df31c75eca95f91400c288611d7db3ff90f"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p312.tif", "s2_cloudy", "ROIs1970_fall", 136, 312, "9e2f35b7d1a1e6959593e28d5c4821306dcd506c93a0ae0fe7d6b74ebcda771e"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p315.tif", "s2_cloudy", "ROIs1970_fall", 136, 315, "196540d91008d008c36830f6234324be7c1ac4c054cafa64b425dfcb7830a2de"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p316.tif", "s2_cloudy", "ROIs1970_fall", 136, 316, "059ca079de18bb3a22b6812cd8e71522d0daf9376d78a9345098928e5024af3a"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_85_p492.tif", "s2_cloudy", "ROIs1970_fall", 85, 492, "9a606be059133c4635082b62c36d8d8a93bee1e45a230571a498ebe080725c1b"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_85_p753.tif", "s2_cloudy", "ROIs1970_fall", 85, 753, "a044ee3c697a75cab3ae8cdfbc9e5f37328e4180d5d4062d4107c5cfdb740671"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/high_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_85_p782.tif", "s2_cloudy", "ROIs1970_fall", 85, 782, "3c933f35b8ddc63dcfe89cb45645f5695527e3a9f337ef7ee7fcfd1a46a0a4fe"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p211.tif", "s2", "ROIs1868_summer", 135, 211, "f702e46c36dbf4f7277271465b1fa51576c11409d33443e9c0731522637bead1"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p239.tif", "s2", "ROIs1868_summer", 135, 239, "c1002eae4ccfb216e4a4af7f0a6ca0d7dd65ebd4986008493c682c6bf41f5a37"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p240.tif", "s2", "ROIs1868_summer", 135, 240, "873a9370cce33285d63f8abf15bb92d364c8ea38e1bb8c37013885b64458ad50"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p268.tif", "s2", "ROIs1868_summer", 135, 268, "fc093ab163c4273e565c3a98fccc1b5eacfcc40afe00df2665317ac4d76b97aa"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p269.tif", "s2", "ROIs1868_summer", 135, 269, "6506a5317512a576f00af858704ad6058faf296df183d37e9ae383c734eb6efe"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p292.tif", "s2", "ROIs1868_summer", 135, 292, "d9a86ab8d4b011e33a75c2e17f4f485c5d88fe0d981dfa81facf70646cf67348"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p299.tif", "s2", "ROIs1868_summer", 135, 299, "19aedbe45780b971dfa94700d7bd6f78ae78b0c23a0be8d7c3950eb6c75f1af1"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p321.tif", "s2", "ROIs1868_summer", 135, 321, "f2573db9fa07dbc5ec3fbb3caf526138ee7062b5158b612cd2005ab074546336"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p472.tif", "s2", "ROIs1868_summer", 135, 472, "48c14dfc5284c2020e2bec192db12fa9c3da3b3ad909b675ba1badc88aa73fef"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p473.tif", "s2", "ROIs1868_summer", 135, 473, "1740ecb2a71306a9697161ff2963253b40926725322c1397d61a629d4e115137"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p501.tif", "s2", "ROIs1868_summer", 135, 501, "b1b59a1963f67e228a4b35195be7441f7498cbd594df6087de9adb9f93bc0a3f"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1868_summer_s2_135_p502.tif", "s2", "ROIs1868_summer", 135, 502, "b8bf0634c9b5629c79e5b110ca8c9193911a80240ef92e869deb178c62dcae77"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1970_fall_s2_148_p521.tif", "s2", "ROIs1970_fall", 148, 521, "ee14d039de3e7a468508700b33ab7a65fb183514710841974b2cefad46a0ff62"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1970_fall_s2_148_p549.tif", "s2", "ROIs1970_fall", 148, 549, "6fde03ecf15ae943b1bde3ab08516d7724b05a4e63c3499a435a2c352d2c7622"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2/ROIs1970_fall_s2_148_p792.tif", "s2", "ROIs1970_fall", 148, 792, "27912e7a9d39cae02b1d2d1152dc0b03cfb27372c18cb3345c3ff552f5dd2a0d"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p211.tif", "s2_cloudy", "ROIs1868_summer", 135, 211, "4d64934213dde6d439060ccacc063c63af73d3ca7a3929a384684138152a6bac"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p239.tif", "s2_cloudy", "ROIs1868_summer", 135, 239, "c7ffa4a98809c5c728686e899f5480bc6a317086327eff3c162fa36599f46917"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p240.tif", "s2_cloudy", "ROIs1868_summer", 135, 240, "5c1a369adc3239e2896fab376000d96900986ce114a7a5cac29a9b3f4119a6d9"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p268.tif", "s2_cloudy", "ROIs1868_summer", 135, 268, "ecebc06a9d709e7e136ef7b0a35fc4b053a1823a1a5d6e5bbe026f2ee12eb20c"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p269.tif", "s2_cloudy", "ROIs1868_summer", 135, 269, "65e3e2e2e86917d0784cdf76ec19423746672f1662da10bd67b79189f8d7e9f7"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p292.tif", "s2_cloudy", "ROIs1868_summer", 135, 292, "2a0038526faf6ae331f5b7b720defd188fb7bb757319031c8bda6a2b36b3636d"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p299.tif", "s2_cloudy", "ROIs1868_summer", 135, 299, "80ef26991686c1f673ff5b9c000f5d7e3c41359eb3022d8dff912596bb281dd5"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p321.tif", "s2_cloudy", "ROIs1868_summer", 135, 321, "6648e11508b7c228f2591a1db29f1fa648af8db158a8cfad99e7a5c8ec39bda1"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p472.tif", "s2_cloudy", "ROIs1868_summer", 135, 472, "7cb277ecdd00671cf963b5c4fb9cd049ff1e1558dc7d84681c14ddb7febae998"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p473.tif", "s2_cloudy", "ROIs1868_summer", 135, 473, "7838b52aa3a1437c9e03ea587ee008d6731c275d399f16d2c9b64f3ab0103b47"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p501.tif", "s2_cloudy", "ROIs1868_summer", 135, 501, "a2ffaa79ef117f7baa86f8b2f26fcc6bd49ac0a4ee8d0aaaa5c77f9f64fcb311"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1868_summer_s2_cloudy_135_p502.tif", "s2_cloudy", "ROIs1868_summer", 135, 502, "75b3e96a9505f7db61634e7f5568bd1490749f9fe48519131a5ffbcd2e0d21a5"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_148_p521.tif", "s2_cloudy", "ROIs1970_fall", 148, 521, "7cfd7946a11536ff511c04a87c0325654e798261af22486040dd1097ada9421a"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_148_p549.tif", "s2_cloudy", "ROIs1970_fall", 148, 549, "f928be4523263346fa65ff8913f3b6e28fe037e79be84ee0863a3f2f2f43be47"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/low_cp/s2_cloudy/ROIs1970_fall_s2_cloudy_148_p792.tif", "s2_cloudy", "ROIs1970_fall", 148, 792, "8fdecfb1423ea4046874498c2718c5e63f651be59e04ed156d472e6ee0810256"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/ok/ROIs1868_summer_s2_31_p100.tif", "s2", "ROIs1868_summer", 31, 100, "31bfd48e24c009b66b203bcf42f9c5e7861b0075567eb1ccfdeb32a37e854308"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/ok/ROIs1868_summer_s2_cloudy_31_p100.tif", "s2_cloudy", "ROIs1868_summer", 31, 100, "fee5f3fbd6985268cf12c17418a112ed71be7fb6d45c4c48f60d8d51f696b1aa"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/ok/ROIs2017_winter_s2_102_p926.tif", "s2", "ROIs2017_winter", 102, 926, "0d1459c7e9de03bf358015802ccb0e9fb8cdbddda7275a8178a3239a867bbf31"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/ok/ROIs2017_winter_s2_cloudy_102_p926.tif", "s2_cloudy", "ROIs2017_winter", 102, 926, "72e923f84afbfac444f7ce250062581b69868ece5702e697d1be067419bb98f9"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1158_spring_s2_26_p100.tif", "s2", "ROIs1158_spring", 26, 100, "fd4b3a5a0f48423228699f6821f9be711630b0fe39dd70e88b055fa189eb84b3"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1158_spring_s2_26_p500.tif", "s2", "ROIs1158_spring", 26, 500, "91041d08435a80645915dbb619d2d680b153e8bf876a9c01cfd5548f12ee1765"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1158_spring_s2_26_p840.tif", "s2", "ROIs1158_spring", 26, 840, "7666092bf777aab00a0c8b3cf860b4f4b6df5578f230a4f5c4bf62b8b6a4c917"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1158_spring_s2_39_p100.tif", "s2", "ROIs1158_spring", 39, 100, "ffa1594dc13337eee4f1e56849e846825f9ab6c6097c55b43eb42fa020c0fc87"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1158_spring_s2_39_p500.tif", "s2", "ROIs1158_spring", 39, 500, "16b92cec6926cb12c7bf8a0e060ed86bba002a59dc7af9211f07677e27726b9a"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1158_spring_s2_39_p838.tif", "s2", "ROIs1158_spring", 39, 838, "216d8ccdfbd65f73e4d3ae64db00150e10a0fc923d7d71134a06f3b39927a499"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_100_p100.tif", "s2", "ROIs1868_summer", 100, 100, "e7ce5799c430b678a715af112cb32d9a3a3e68b84e2dbe9a48d69220d620bd52"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_100_p500.tif", "s2", "ROIs1868_summer", 100, 500, "4a9f64edf0fbfc78cbd45ba8f3d1e6731bd38950aafd88a8453bc8dff28f0ee4"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_100_p840.tif", "s2", "ROIs1868_summer", 100, 840, "61f5cffa3f264e11fb7b905bf51bda47085127f74f2cd4da2bef3eb0a5403f1c"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_101_p100.tif", "s2", "ROIs1868_summer", 101, 100, "eac27029040eaa94b32a48b74ff0725bc9c42cbf16cc0cb4f8223d699f08030f"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_101_p505.tif", "s2", "ROIs1868_summer", 101, 505, "d8ca0395b3021863dcb27a146cccd2682d5f4f03616ac3e8c379b3ab3ed81f25"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_101_p840.tif", "s2", "ROIs1868_summer", 101, 840, "f49cac58027598eeafd8f7c5a9359c68ef8442671d02f0473d05847b18f7d205"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_102_p100.tif", "s2", "ROIs1868_summer", 102, 100, "7aec7f5082430901682f700191624ee7519417725250952c2faae9fb695a596d"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_102_p500.tif", "s2", "ROIs1868_summer", 102, 500, "313af40a6efdf0e53d1551002b37663e060226e9e0bdcfc23ca51802942aa151"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1868_summer_s2_102_p840.tif", "s2", "ROIs1868_summer", 102, 840, "fcde2fec831404b258b7b4fdbac11a63f2cf5e304dadb5cd0908aaf1d5d1769b"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1970_fall_s2_136_p100.tif", "s2", "ROIs1970_fall", 136, 100, "a5ae504b70b211f03f10383afa34efc3cafca8e7784bb61d55d0c875f2c188bc"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1970_fall_s2_136_p500.tif", "s2", "ROIs1970_fall", 136, 500, "6f6e54fcc835fbe1523ac8d69c55b4006f4bec74e26b604d99a9706ec8fe5540"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2/ROIs1970_fall_s2_136_p840.tif", "s2", "ROIs1970_fall", 136, 840, "d87a7828e2e4844010fe055e4f47b67b0f468915fae42c6d8fd8b789cf888127"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1158_spring_s2_cloudy_26_p100.tif", "s2_cloudy", "ROIs1158_spring", 26, 100, "6d68c8c139378c16d7168a6f5a4bcfffe68052214fa30e446340b284f46e4a24"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1158_spring_s2_cloudy_26_p500.tif", "s2_cloudy", "ROIs1158_spring", 26, 500, "fbf51bccac3cbd7cdc32a29cb91b5783422a25df31623ae9aa9a7be9147cceb2"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1158_spring_s2_cloudy_26_p840.tif", "s2_cloudy", "ROIs1158_spring", 26, 840, "65a8f897fca3b7144080009f019a76dd285dbe02b4b046e0b6e0871714a8b34b"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1158_spring_s2_cloudy_39_p100.tif", "s2_cloudy", "ROIs1158_spring", 39, 100, "ddde6042a1b500673026410723af9490f1598d8593cefbbc4c6263811363abce"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1158_spring_s2_cloudy_39_p500.tif", "s2_cloudy", "ROIs1158_spring", 39, 500, "0e59f3bce758faa6adb0209056ed588f2cae8ed1746aeb4d8daef585d1175781"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1158_spring_s2_cloudy_39_p838.tif", "s2_cloudy", "ROIs1158_spring", 39, 838, "50625c1554b6632e1d263362f51a95b783d4bb434a9be4661d1baa2d5d29c5fc"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_100_p100.tif", "s2_cloudy", "ROIs1868_summer", 100, 100, "7b08917e469f4f44b4dab17618fc031fb819d30ff733aa0e4649db18897ec2cf"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_100_p500.tif", "s2_cloudy", "ROIs1868_summer", 100, 500, "0d54a1d4595de00a3afa174d217a4189d9bd0661aab204a3d1c0952ff5a28e49"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_100_p840.tif", "s2_cloudy", "ROIs1868_summer", 100, 840, "4e4d816d2ff6b9c073e6458ae6acea459d648fa9e9f8325740ae84eda69fc9f6"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_101_p100.tif", "s2_cloudy", "ROIs1868_summer", 101, 100, "22f8be89f19af8568c332a3155a3f89680eea991a4653d4bf8e3bd856d2e3e14"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_101_p505.tif", "s2_cloudy", "ROIs1868_summer", 101, 505, "f882c718568b8c11106afe93411fc4e6d0e0ce14a9bfa2774ec4ef0436c47f9b"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_101_p840.tif", "s2_cloudy", "ROIs1868_summer", 101, 840, "4615e62d065ac056e29e325fb45eaaa2df63dc68838ef92830d226fc76d10c16"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_102_p100.tif", "s2_cloudy", "ROIs1868_summer", 102, 100, "fea2b1b926cca3de7a52b9a2ae90df921e9dac723cc2ba3850e838c5d721ebc6"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_102_p500.tif", "s2_cloudy", "ROIs1868_summer", 102, 500, "0d47fa7cd478ccf0c5bd24caeef2ddfb6952da819a69bee778350cb04cace37e"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1868_summer_s2_cloudy_102_p840.tif", "s2_cloudy", "ROIs1868_summer", 102, 840, "649b3f3031ff7f4f28d51cfe4dcb3cc19c147ce33af8ccb4caac328ce46f6aef"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p100.tif", "s2_cloudy", "ROIs1970_fall", 136, 100, "61224bd0b3bc4b2315324b66aea6d7e2218705d8d80b11a0a22b51594593bdf4"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p500.tif", "s2_cloudy", "ROIs1970_fall", 136, 500, "2a63c996b3f62b73386bf76a01f7161d17ace4052b9c6395615ea02df69a3366"),
    ("Oriolac/cloud-removal", "eda/notebooks/imgs/cr/untagged/s2_cloudy/ROIs1970_fall_s2_cloudy_136_p840.tif", "s2_cloudy", "ROIs1970_fall", 136, 840, "41949683099009aa37613e147221d10adec1beab47bacd0a6e013a5d004fc25f"),
    ("zhangcy23/Mamba-SCR", "img/ROIs1868_summer_s1_19_p30.tif", "s1", "ROIs1868_summer", 19, 30, "cbdcbbd467baaa96880f7028affdf6b50c32893d2c442720bc75e695189a6801"),
    ("zhangcy23/Mamba-SCR", "img/ROIs1868_summer_s2_cloudy_19_p30.tif", "s2_cloudy", "ROIs1868_summer", 19, 30, "98518cb8598583eb4fb3dda4004e682d9e3321c6c66120cf777357da177dba3b"),
    ("CodyKurpanek/dSen2CR_DSP", "dsen2-cr/Data/s1/ROIs1158_spring_101_30.tif", "s1", "ROIs1158_spring", 101, 30, "7c48231c3b78a25342612c3ba1bd5158e4a002628b1ca660320f7900b3063956"),
    ("CodyKurpanek/dSen2CR_DSP", "dsen2-cr/Data/s1/ROIs1158_spring_101_31.tif", "s1", "ROIs1158_spring", 101, 31, "37348b2fd6cdc655e19874b2b6f4decf1649b544f8c2e6b80e4977964b5d9b8f"),
    ("CodyKurpanek/dSen2CR_DSP", "dsen2-cr/Data/s1/ROIs1158_spring_101_32.tif", "s1", "ROIs1158_spring", 101, 32, "32d582dbf673674569484a79343019a4a179d530b614ed309e668a06bb469e76"),
    ("CodyKurpanek/dSen2CR_DSP", "dsen2-cr/Data/s2_cloudFree/ROIs1158_spring_101_30.tif", "s2", "ROIs1158_spring", 101, 30, "feaa13cf075e2ca68072a75fcb01138bc463fad7177185ce9265411475b2f4ad"),
    ("CodyKurpanek/dSen2CR_DSP", "dsen2-cr/Data/s2_cloudFree/ROIs1158_spring_101_31.tif", "s2", "ROIs1158_spring", 101, 31, "321eec42bb6036c9aac5693715264894c0922c666bdb2c581b41adf002e96a9d"),
    ("CodyKurpanek/dSen2CR_DSP", "dsen2-cr/Data/s2_cloudFree/ROIs1158_spring_101_32.tif", "s2", "ROIs1158_spring", 101, 32, "091bd71e698b9511d9f817e4b5148d5f2334ed41fd30d69fa53fef46408e5d92"),
]
SOURCES: tuple[RealPatch, ...] = tuple(RealPatch(*row) for row in _ROWS)


def real_root() -> Path:
    """Where the fetched patches live: ``<benchmark cache>/real/sen12mscr``."""
    return cache_dir() / "real" / "sen12mscr"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(patch: RealPatch, mirror: Path | None) -> bytes:
    if mirror is not None:
        git_dir = mirror / patch.repo.replace("/", "+") / "repo"
        return subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{patch.commit}:{patch.path}"],
                              check=True, capture_output=True).stdout
    with urllib.request.urlopen(patch.url, timeout=60) as response:  # noqa: S310 - a fixed https URL
        return response.read()


def fetch(root: Path | None = None, mirror: Path | None = None,
          sources: Sequence[RealPatch] = SOURCES) -> Path:
    """Write every patch of ``sources`` under ``root`` (default :func:`real_root`); present, intact files are kept.

    ``mirror``: a folder of git mirrors (``<owner>+<name>/repo``) to read from instead of GitHub.
    A file whose SHA-256 is not the recorded one is refused, and nothing is written for it.
    """
    root = Path(root or real_root())
    for patch in sources:
        target = root / patch.relpath()
        if target.exists() and _sha256(target.read_bytes()) == patch.sha256:
            continue
        data = _read(patch, mirror)
        if _sha256(data) != patch.sha256:
            raise ValueError(f"{patch.repo}@{patch.commit[:12]}:{patch.path} has SHA-256 {_sha256(data)}, "
                             f"expected {patch.sha256}: not the file this benchmark measured")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return root


def provenance_table(sources: Sequence[RealPatch] = SOURCES) -> str:
    """Markdown: per repository, the commit, its licence and how many files of each modality came from it."""
    lines = ["| repository | commit | repository licence | files (S1 / S2 clear / S2 cloudy) | patches |",
             "| --- | --- | --- | --- | --- |"]
    for repo, (commit, licence) in REPOSITORIES.items():
        files = [p for p in sources if p.repo == repo]
        count = {mod: sum(p.modality == mod for p in files) for mod in ("s1", "s2", "s2_cloudy")}
        names = sorted({f"{p.season}_{p.roi}_p{p.patch}" for p in files})
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        lines.append(f"| [{repo}](https://github.com/{repo}) | `{commit[:12]}` | {licence} | "
                     f"{count['s1']} / {count['s2']} / {count['s2_cloudy']} | {shown} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Fetch the patches (``--root``, ``--mirror``) and print where they are."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="target folder (default: %(default)s = cache)")
    parser.add_argument("--mirror", type=Path, default=None, help="folder of git mirrors <owner>+<name>/repo")
    args = parser.parse_args(argv)
    root = fetch(args.root, args.mirror)
    print(f"{len(SOURCES)} files under {root}")
    print(provenance_table())


if __name__ == "__main__":
    main()
