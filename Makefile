# stolon-pgbouncer: C core + embedded Lua 5.4 host.
# Targets: all (default), check, deps, asan, valgrind, fuzz, install, man, units, deb,
# deb-check, demo, lint, format, clean, fresh-check, bench.
# Quiet rules; V=1 shows the commands.

PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
DATADIR   ?= $(PREFIX)/share/stolon-pgbouncer
MANDIR    ?= $(PREFIX)/share/man
# The units name /etc/stolon-pgbouncer whatever PREFIX is: systemd reads /etc.
SYSCONFDIR ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo 0.1.0)
BUILD     ?= build

PKGS      := lua5.4 libuv libcurl libpq libmicrohttpd libedit
CC        ?= cc
WARN      := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
             -Wno-unused-parameter
CFLAGS    ?= -O2 -g
# pkg-config is asked when a recipe runs, never while make reads this file: on a
# fresh machine `make demo` or `make deps check` installs pkg-config and the -dev
# packages first (deps), and only then compiles. $(BUILD)/pkg-cflags caches the answer.
PKG_CFLAGS = $(shell cat $(BUILD)/pkg-cflags)
PKG_LIBS   = $(shell cat $(BUILD)/pkg-libs)
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(EXTRA_CFLAGS) $(PKG_CFLAGS) \
             -DSPGB_VERSION='"$(VERSION)"' -MMD -MP
LDLIBS     = $(PKG_LIBS) -lm
# Full RELRO (-z relro -z now), as the Debian package already links (debian/rules:
# hardening=+all): the GOT is read-only after start-up. Measured on `run` of an empty
# script (LD_DEBUG=statistics, 41 runs): no change beyond the noise, since our own
# PLT is a few hundred entries and 24 of the 40 libraries we load are BIND_NOW
# already. The rest of start-up is the 42 libraries libcurl and libmicrohttpd pull in:
# no linker flag removes those (--as-needed drops none of our 8 DT_NEEDED), and a
# static libcurl is not possible with Debian's packages (docs/benchmarks.md).
LINK_HARDEN = -Wl,-z,relro -Wl,-z,now
ALL_LDFLAGS = $(LINK_HARDEN) $(LDFLAGS) $(EXTRA_LDFLAGS)

ifeq ($(V),1)
Q :=
else
Q := @
endif

SRC       := $(filter-out src/main.c,$(wildcard src/*.c))
OBJ       := $(SRC:src/%.c=$(BUILD)/%.o) $(BUILD)/embedded.o
# lua/ and policies/ go into the binary (tools/embed.c writes $(BUILD)/embedded.c), so
# an installed binary stands alone; SPGB_LUA_DIR overrides them in development. The
# list is kept in $(BUILD)/embed.list so that removing a file rebuilds the copy too.
EMBED_SRC := $(sort $(wildcard lua/*.lua lua/*/*.lua policies/*.lua policies/*/*.lua))
EMBED_LIST := $(shell mkdir -p $(BUILD) && echo '$(EMBED_SRC)' | cmp -s - $(BUILD)/embed.list || \
                echo '$(EMBED_SRC)' > $(BUILD)/embed.list; echo $(BUILD)/embed.list)
MAINOBJ   := $(BUILD)/main.o
CTESTS    := $(wildcard tests/c/test_*.c)
CTESTBINS := $(CTESTS:tests/c/%.c=$(BUILD)/tests/%)
BIN       := stolon-pgbouncer
# Modules are found through weak references (src/modules.c), which do not pull
# objects out of an archive: link the whole library.
WHOLE      = -Wl,--whole-archive $(BUILD)/libspgb.a -Wl,--no-whole-archive

.PHONY: all check check-c check-lua lint deps asan valgrind install demo clean format fuzz fuzz-smoke bench bench-quick \
        fresh-check playground playground-status playground-down man units deb deb-check

all: $(BIN)

# `deps` named on the command line (or `demo`, which runs it) finishes before anything
# that needs the packages starts, even under -j.
ifneq ($(filter deps demo playground,$(MAKECMDGOALS)),)
AFTER_DEPS := deps
endif

$(BUILD)/pkg-cflags: | $(AFTER_DEPS)
	@mkdir -p $(@D)
	$(Q)pkg-config --exists --print-errors $(PKGS) || \
	  { echo "build packages missing: run 'make deps' first" >&2; exit 1; }
	$(Q)pkg-config --libs $(PKGS) > $(BUILD)/pkg-libs
	$(Q)pkg-config --cflags $(PKGS) > $@.tmp && mv $@.tmp $@

$(OBJ) $(MAINOBJ) $(CTESTBINS): | $(BUILD)/pkg-cflags

$(BUILD)/%.o: src/%.c
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tools/embed: tools/embed.c
	@mkdir -p $(@D)
	$(Q)$(CC) -std=c11 -O2 -Wall -Wextra -Werror -o $@ $<

$(BUILD)/embedded.c: $(BUILD)/tools/embed $(EMBED_SRC) $(EMBED_LIST)
	@$(if $(Q),echo "  EMBED   lua/ policies/")
	$(Q)$(BUILD)/tools/embed $@ $(EMBED_SRC)

$(BUILD)/embedded.o: $(BUILD)/embedded.c
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -iquote src -c -o $@ $<

$(BUILD)/libspgb.a: $(OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN): $(MAINOBJ) $(BUILD)/libspgb.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $(MAINOBJ) $(WHOLE) $(LDLIBS)

$(BUILD)/tests/%: tests/c/%.c $(BUILD)/libspgb.a
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -iquote src $(ALL_LDFLAGS) -o $@ $< $(WHOLE) $(LDLIBS) -lcmocka

# Development: the binary (and every daemon the suites start) loads lua/ and
# policies/ from the checkout through SPGB_LUA_DIR instead of its embedded copy.
export SPGB_LUA_DIR := $(CURDIR)

# One suite after another (lint first: it fails fast), whatever -j says; each suite
# parallelises inside itself where it can.
check: all
	$(Q)$(MAKE) --no-print-directory lint
	$(Q)$(MAKE) --no-print-directory check-c
	$(Q)$(MAKE) --no-print-directory check-lua
	$(Q)$(MAKE) --no-print-directory deb-check

check-c: $(CTESTBINS)
	$(Q)set -e; for t in $(CTESTBINS); do echo "== $$t"; $(VALGRIND) $$t; done

# Every spec file under tests/lua runs inside our own host, so specs use the real primitives.
BUSTED_ARGS ?=
LUA_SPECS ?= tests/lua
# SPGB_STAGE_DIR: where the suites copy the binary that daemons run as postgres
# (lua/playground/stage.lua), removed after the run whatever happens.
check-lua: all | $(AFTER_DEPS)
	$(Q)stage=$$(mktemp -d /tmp/spgb-stage.XXXXXX) && trap 'rm -rf "$$stage"' EXIT INT TERM && \
	  SPGB_STAGE_DIR=$$stage ./$(BIN) run "$$(command -v busted)" --helper=tests/lua/support/init.lua \
	  -o utfTerminal $(BUSTED_ARGS) $(LUA_SPECS)

lint: | $(AFTER_DEPS)
	$(Q)luacheck -q lua policies tests/lua bench examples scripts fuzz

deps:
	$(Q)./scripts/deps.sh

# The sanitizer build has its own objects and binary; the specs' main process runs
# it (daemons the specs start use ./stolon-pgbouncer).
asan: all
	$(Q)ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(MAKE) BUILD=build-asan BIN=stolon-pgbouncer-asan \
	  CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined" check-c check-lua

valgrind: $(CTESTBINS)
	$(Q)$(MAKE) check-c VALGRIND="valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99"

# The man page, from each command's --help and man/stolon-pgbouncer.h2m (help2man).
MAN := $(BUILD)/man/stolon-pgbouncer.1
man: $(MAN)
$(MAN): $(BIN) scripts/man.lua man/stolon-pgbouncer.h2m lua/flags.lua lua/common.lua $(wildcard policies/*.lua)
	@mkdir -p $(@D)
	@$(if $(Q),echo "  MAN     $@")
	$(Q)./$(BIN) run scripts/man.lua $@ ./$(BIN)

# systemd units with this install's paths; $(BUILD)/unit-paths changes (and the units
# are made again) only when BINDIR or SYSCONFDIR do.
UNITS := $(patsubst systemd/%.in,$(BUILD)/systemd/%,$(wildcard systemd/*.service.in))
units: $(UNITS)
$(BUILD)/unit-paths: FORCE
	@mkdir -p $(@D)
	@echo "$(BINDIR) $(SYSCONFDIR)" | cmp -s - $@ || echo "$(BINDIR) $(SYSCONFDIR)" > $@
$(BUILD)/systemd/%: systemd/%.in $(BUILD)/unit-paths
	@mkdir -p $(@D)
	@$(if $(Q),echo "  UNIT    $@")
	$(Q)sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' $< > $@.tmp && mv $@.tmp $@
FORCE:

# Configuration under $(SYSCONFDIR)/stolon-pgbouncer is installed only where absent:
# a second `make install` never overwrites an operator's edits.
ETC_FILES := supervise.env pauser.env pgbouncer.ini.template
# The binary carries lua/ and policies/; the policies are also installed as files to
# read and copy (`stolon-pgbouncer policy show NAME` prints the same).
install: $(BIN) $(MAN) $(UNITS)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/policies/examples \
	  $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(SYSCONFDIR)/stolon-pgbouncer
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/$(BIN)
	install -m 0644 policies/*.lua $(DESTDIR)$(DATADIR)/policies/
	install -m 0644 policies/examples/*.lua $(DESTDIR)$(DATADIR)/policies/examples/
	install -m 0644 $(MAN) $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(UNITS) $(DESTDIR)$(SYSTEMDUNITDIR)/
	for f in $(ETC_FILES); do \
	  test -e $(DESTDIR)$(SYSCONFDIR)/stolon-pgbouncer/$$f || \
	  install -m 0644 systemd/$$f $(DESTDIR)$(SYSCONFDIR)/stolon-pgbouncer/$$f || exit 1; \
	done

# The Debian package (debian/, dpkg-buildpackage) from a copy of the tracked and
# unignored files in $(BUILD)/deb, so nothing the build makes lands in the checkout;
# the .deb, .buildinfo and .changes end up in $(BUILD)/deb.
deb:
	$(Q)./scripts/deb.sh build

# Build the package, then install, run and purge it (as root), or check its contents
# and lintian (otherwise). About a minute.
deb-check:
	$(Q)./scripts/deb.sh check

# MANAGER=patroni: the same demo on real Patroni (lua/playground/patroni.lua).
MANAGER ?= stolon
demo: deps all
	$(Q)./$(BIN) run examples/demo.lua --manager $(MANAGER)

# libFuzzer targets (fuzz/): each for FUZZ_SECONDS; CI runs the short smoke.
FUZZ_SECONDS ?= 60
fuzz:
	$(Q)./scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke:
	$(Q)./scripts/fuzz.sh 10

# The demo's cluster kept up to be explored (scripts/playground.sh).
playground: deps all
	$(Q)./scripts/playground.sh up

playground-status:
	$(Q)./scripts/playground.sh status

playground-down:
	$(Q)./scripts/playground.sh down

# The README's first-screen commands, each on a new minimal Debian 12 root (chroot;
# needs root or sudo, mmdebstrap, network for apt). Slow: CI runs it last.
fresh-check:
	$(Q)./scripts/fresh-check.sh

# Benchmarks (bench/): the table and bench/results/all.json. Not a test.
bench: all
	$(Q)sh bench/run.sh

bench-quick: all
	$(Q)sh bench/run.sh --quick

format:
	clang-format -i src/*.c src/*.h tests/c/*.c

clean:
	rm -rf build build-asan build-fuzz $(BIN) stolon-pgbouncer-asan debian/.debhelper debian/stolon-pgbouncer \
	  debian/files debian/debhelper-build-stamp debian/*.substvars debian/*.debhelper.log

-include $(OBJ:.o=.d) $(MAINOBJ:.o=.d)
