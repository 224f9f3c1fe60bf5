# Handed to the WAMR build (deno_core's quickjs engine) through CMAKE_TOOLCHAIN_FILE in
# .cargo/config.toml: FetchContent uses Debian's libsimde-dev headers instead of cloning
# SIMDe from GitHub, so the default build works offline.
set(FETCHCONTENT_SOURCE_DIR_SIMDE "/usr/include" CACHE PATH "system SIMDe headers")
