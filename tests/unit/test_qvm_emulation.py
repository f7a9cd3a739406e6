"""Tests of the Qubes dom0 `qvm` test double (tests/emulation/qubes) through Salt's loader."""
from __future__ import annotations

import pathlib
import sys
import textwrap
from typing import Any, Iterator

import pytest
import salt.client
import salt.config
import salt.loader

QUBES = pathlib.Path(__file__).resolve().parents[1] / 'emulation' / 'qubes'
sys.path.insert(0, str(QUBES))
import qubes_db  # noqa: E402  pylint: disable=wrong-import-position

VM = {'present': [{'template': 'debian-13-minimal'}, {'label': 'orange'}],
      'prefs': [{'netvm': 'sys-firewall'}, {'provides-network': True}],
      'features': [{'enable': ['ipv6']}], 'service': [{'enable': ['cjdns']}]}


class Dom0:
    """An emulated dom0 (JSON db) plus Salt loaders configured for the double."""

    def __init__(self, tmp: pathlib.Path, version: str) -> None:
        self.db = str(tmp / 'qubes.json')
        self.conf = tmp / 'minion'
        (tmp / 'srv').mkdir()
        self.conf.write_text(textwrap.dedent(f"""\
            id: dom0
            file_client: local
            root_dir: {tmp}/root
            file_roots: {{base: [{tmp}/srv]}}
            module_dirs: [{QUBES}]
            qvm_emulation_db: {self.db}
            qvm_emulation_version: "{version}"
            """))
        self.loaders = {test: self._loader(test) for test in (False, True)}

    def _loader(self, test: bool) -> Any:
        opts = salt.config.minion_config(str(self.conf))
        pathlib.Path(opts['cachedir']).mkdir(parents=True, exist_ok=True)
        opts['grains'] = {'id': 'dom0', 'os': 'Fedora'}
        opts['test'] = test  # the 3006 loader copies opts: set before loading
        utils = salt.loader.utils(opts)
        mods = salt.loader.minion_mods(opts, utils=utils)
        return mods, salt.loader.states(opts, mods, utils, {})

    def mod(self, fun: str, *args: Any, test: bool = False, **kwargs: Any) -> Any:
        return self.loaders[test][0][fun](*args, **kwargs)

    def state(self, fun: str, name: str, test: bool = False, **kwargs: Any) -> dict:
        """The state function itself (fast); exceptions propagate."""
        return self.loaders[test][1][fun](name, **kwargs)

    def salt_state(self, fun: str, name: str, test: bool = False, **kwargs: Any) -> dict:
        """Through state.single: Salt turns exceptions into a traceback comment."""
        ret = self.loaders[False][0]['state.single'](fun, name, test=test, **kwargs)
        return next(iter(ret.values()))

    def journal(self) -> list:
        return qubes_db.journal(self.db)


@pytest.fixture(scope='module', params=['4.2', '4.3'])
def dom0(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Dom0]:
    yield Dom0(tmp_path_factory.mktemp('dom0-' + request.param), request.param)


@pytest.fixture()
def qubes(dom0: Dom0) -> Dom0:
    """Fresh database for every test; the loaders are shared per version."""
    qubes_db.new_db(dom0.db, version=dom0.loaders[False][0].opts['qvm_emulation_version'])
    return dom0


def v42(qubes: Dom0) -> bool:
    return qubes.loaders[False][0].opts['qvm_emulation_version'] == '4.2'


def test_new_db_models_a_default_dom0(tmp_path: pathlib.Path) -> None:
    db = str(tmp_path / 'q.json')
    qubes_db.new_db(db, installed=('debian-13-minimal', 'debian-13-xfce'))
    assert qubes_db.load(db)['domains']['dom0']['class'] == 'AdminVM'
    assert qubes_db.pref(db, 'sys-firewall', 'netvm') == 'sys-net'
    assert qubes_db.pref(db, 'default-dvm', 'netvm') == 'sys-firewall'      # app default
    assert qubes_db.is_default(db, 'default-dvm', 'netvm')
    assert qubes_db.pref(db, 'sys-net', 'memory') == 400                      # template's
    assert qubes_db.features(db, 'debian-13-minimal')['template-name'] == 'debian-13-minimal'
    assert qubes_db.power(db, 'sys-firewall') == 'Running'
    assert qubes_db.feature_value(True) == '1' and qubes_db.feature_value(False) == ''
    with qubes_db.transaction(db) as raw:                 # explicit == default: not default
        qubes_db.set_property(raw, 'default-dvm', 'memory', 400)
    assert not qubes_db.is_default(db, 'default-dvm', 'memory')
    with qubes_db.transaction(db) as raw, pytest.raises(qubes_db.QubesNoSuchPropertyError):
        qubes_db.set_property(raw, 'debian-13-minimal', 'template', 'debian-13-xfce')


@pytest.mark.parametrize('test', [False, True])
def test_check_returns_a_status_whose_truth_is_existence(qubes: Dom0, test: bool) -> None:
    there, absent = qubes.mod('qvm.check', 'sys-net', test=test), qubes.mod(
        'qvm.check', 'nope', test=test)
    assert there and not absent
    assert (there.result, there.retcode) == ((None if test else True), 0)
    assert (absent.result, absent.retcode) == (False, 1)
    assert there.comment == '/usr/bin/qvm-check sys-net '
    assert bool(qubes.mod('qvm.check', 'nope', 'missing'))


def test_prefs_get_reads_without_writing(qubes: Dom0) -> None:
    got = qubes.mod('qvm.prefs', 'sys-firewall', 'netvm', 'maxmem', test=True)
    assert got.comment == 'maxmem             : *default*\nnetvm              : sys-net'
    assert got.changes == {} and got.passed()
    underscore = qubes.mod('qvm.prefs', 'sys-firewall', 'provides_network')
    if v42(qubes):
        assert (underscore.result, underscore.comment) == (False, 'provides_network   : Invalid key!')
    else:
        assert underscore.comment == 'provides_network   : True'
    assert qubes.mod('qvm.prefs', 'sys-net', get=['provides-network']).comment.endswith(': True')
    assert qubes.mod('qvm.features', 'sys-net').comment == '[ENABLED]  servicevm'
    assert qubes.mod('qvm.state', 'sys-net').stdout == 'Running'
    assert qubes.mod('qvm.template_info', 'debian-13-minimal')['name'] == 'debian-13-minimal'
    assert qubes.mod('qvm.prefs', 'sys-net', 'netvm', __pub_fun='qvm.prefs') == {
        'retcode': 0, 'stdout': 'netvm              : None', 'stderr': ''}
    assert qubes.journal() == []


def test_dry_run_for_a_missing_vm_fails_and_writes_nothing(qubes: Dom0) -> None:
    ret = qubes.salt_state('qvm.vm', 'sys-cjdns', test=True, **VM)
    assert ret['result'] is False and ret['changes'] == {}
    assert ret['comment'].startswith(
        "====== ['present'] ======\n[TEST] /usr/bin/qvm-create sys-cjdns --class=AppVM "
        "--template=debian-13-minimal --label=orange \n\n====== ['prefs'] ======\n"
        "Virtual Machine does not exist!")
    assert qubes.journal() == []


def test_vm_creates_then_is_a_no_op(qubes: Dom0) -> None:
    first = qubes.salt_state('qvm.vm', 'sys-cjdns', **VM)   # no extra kwargs from Salt
    assert first['result'] is True
    assert first['changes'] == {
        'qvm.prefs': {'qvm.create': {'netvm': {'old': '*default*', 'new': 'sys-firewall'},
                                     'provides_network': {'old': '*default*', 'new': True}}},
        'qvm.features': {'qvm.features': {'ipv6': {'old': None, 'new': '1'}}},
        'qvm.service': {'qvm.service': {'cjdns': {'old': 'Missing', 'new': 'Enabled'}}}}
    assert qubes_db.features(qubes.db, 'sys-cjdns')['service.cjdns'] == '1'
    assert qubes_db.features(qubes.db, 'sys-cjdns')['servicevm'] == '1'   # core-admin ext
    again = qubes.state('qvm.vm', 'sys-cjdns', **VM)
    assert (again['result'], again['changes']) == (True, {})
    assert "[SKIP] A VM with the name 'sys-cjdns' already exists." in again['comment']
    dry = qubes.state('qvm.vm', 'sys-cjdns', test=True, **VM)
    assert (dry['result'], dry['changes']) == (None, {})


def test_prefs_write_even_in_test_mode(qubes: Dom0) -> None:
    ret = qubes.state('qvm.prefs', 'default-dvm', test=True, memory=300)
    assert ret['result'] is None
    assert ret['changes'] == {'qvm.create': {'memory': {'old': '*default*', 'new': 300}}}
    assert qubes_db.pref(qubes.db, 'default-dvm', 'memory') == 300
    feat = qubes.state('qvm.features', 'default-dvm', test=True, enable=['ipv6'])
    assert feat['changes'] and 'ipv6' not in qubes_db.features(qubes.db, 'default-dvm')


def test_provides_network_underscore_depends_on_version(qubes: Dom0) -> None:
    ret = qubes.state('qvm.prefs', 'default-dvm', provides_network=True)
    if v42(qubes):   # no known key selected: the state just lists every pref
        assert ret['changes'] == {} and 'memory             : *default*' in ret['comment']
        assert not qubes_db.pref(qubes.db, 'default-dvm', 'provides_network')
    else:
        assert ret['changes']['qvm.create']['provides_network']['new'] is True
    assert qubes.state('qvm.prefs', 'sys-cjdns', **{'provides-network': True})['result'] is False


def test_raw_yaml_values_are_compared_with_equality(qubes: Dom0) -> None:
    for _ in range(2):
        mem = qubes.state('qvm.prefs', 'sys-firewall', memory='400')
        assert mem['changes']['qvm.create']['memory']['new'] == '400'
        ipv6 = qubes.state('qvm.features', 'sys-firewall', set=[{'ipv6': 1}])
        assert ipv6['changes']['qvm.features']['ipv6']['new'] == 1
    assert mem['changes']['qvm.create']['memory']['old'] == 400
    assert ipv6['changes']['qvm.features']['ipv6']['old'] == '1'
    assert qubes.state('qvm.prefs', 'sys-firewall', memory=400)['changes'] == {}


def test_bad_netvm_and_label_escape_as_tracebacks(qubes: Dom0) -> None:
    ret = qubes.salt_state('qvm.prefs', 'default-dvm', netvm='default-mgmt-dvm')
    assert ret['result'] is False
    assert 'QubesValueError: The default-mgmt-dvm qube does not provide network' in ret['comment']
    ret = qubes.salt_state('qvm.prefs', 'default-dvm', label='pink')
    assert 'QubesLabelNotFoundError: Label does not exist: pink' in ret['comment']
    missing = qubes.state('qvm.prefs', 'nope', memory=1)
    assert (missing['result'], missing['comment'], missing['stderr']) == (
        False, '', 'Virtual Machine does not exist!\n')


def test_clone_and_present_never_report_changes(qubes: Dom0) -> None:
    made = qubes.state('qvm.clone', 'cjdns-gw', source='debian-13-minimal')
    assert (made['name'], made['result'], made['changes']) == ('qvm.check', True, {})
    again = qubes.state('qvm.clone', 'cjdns-gw', source='debian-13-minimal')
    assert again['comment'] == "[SKIP] A VM with the name 'cjdns-gw' already exists."
    assert qubes_db.features(qubes.db, 'cjdns-gw')['template-name'] == 'debian-13-minimal'
    nolabel = qubes.state('qvm.present', 'x', template='cjdns-gw', colour='red')  # ignored key
    assert nolabel['result'] is True       # real _finalize quirk: the failure is not reported
    assert nolabel['comment'].endswith('qvm-create: error: --label option is mandatory')
    assert not qubes_db.exists(qubes.db, 'x')


def test_vm_wrapper_keywords_order_and_skips(qubes: Dom0) -> None:
    bad = qubes.state('qvm.vm', 'sys-net', bogus=[])
    assert (bad['result'], bad['comment']) == (False, 'Unknown action keyword: bogus')
    ordered = qubes.state('qvm.vm', 'new', features=[{'enable': ['a']}],
                          present=[{'label': 'red'}], actions=['features', 'present'])
    assert ordered['comment'].startswith("====== ['features'] ======\n"
                                         "Virtual Machine does not exist!\n\n====== ['present']")
    skipped = qubes.state('qvm.vm', 'default-dvm', running=[], start=[])
    assert skipped['comment'].endswith(
        "====== ['start'] ======\n[SKIP] Skipping due to previous failure!")
    tolerant = qubes.state('qvm.vm', 'default-dvm', actions=[{'running': 'pass'}, 'start'],
                           running=[], start=[])
    assert tolerant['result'] is True and qubes_db.power(qubes.db, 'default-dvm') == 'Running'


def test_template_installed_follows_each_version(qubes: Dom0) -> None:
    have = qubes.state('qvm.template_installed', 'debian-13-minimal')
    assert have['comment'] == ('Template debian-13-minimal version 4.2.0 already installed'
                               if v42(qubes) else 'Template debian-13-minimal already installed')
    dry = qubes.state('qvm.template_installed', 'debian-12-minimal', test=True)
    assert (dry['result'], dry['changes']) == (None, {'new': 'debian-12-minimal'})
    new = qubes.state('qvm.template_installed', 'debian-12-minimal')
    assert new['result'] is True and isinstance(new['comment'], tuple)
    assert new['changes']['new']['reponame'] == 'qubes-templates-itl'
    qubes.state('qvm.clone', 'fedora-42-xfce', source='debian-13-minimal')   # unmanaged copy
    clash = qubes.state('qvm.template_installed', 'fedora-42-xfce')
    if v42(qubes):
        assert (clash['result'], clash['comment'], clash['changes']['new']) == (False, '', {})
    else:
        assert clash['comment'] == 'Template fedora-42-xfce already installed'
    unknown = qubes.state('qvm.template_installed', 'nope-1')
    assert unknown['comment'].startswith('Failed to install template nope-1. Additional info')


def test_direct_states_return_the_status_keys(qubes: Dom0) -> None:
    ret = qubes.state('qvm.service', 'sys-net', enable=['cjdns'])
    assert list(ret) == ['name', 'result', 'retcode', 'stdout', 'stderr', 'data', 'changes',
                         'comment', 'prefix', 'message', 'error_message']
    assert ret['changes'] == {'qvm.service': {'cjdns': {'old': 'Missing', 'new': 'Enabled'}}}
    assert qubes.state('qvm.halted', 'sys-net')['comment'] == '[SKIP] Running'   # sic


def test_sls_can_branch_on_qvm_reads_while_rendering(qubes: Dom0, tmp_path: pathlib.Path
                                                     ) -> None:
    srv = pathlib.Path(qubes.conf).parent / 'srv'
    (srv / 'probe.sls').write_text(textwrap.dedent("""\
        {%- set exists = salt['qvm.check']('sys-cjdns') %}
        {%- set netvm = salt['qvm.prefs']('sys-firewall', 'netvm').comment.split(': ', 1)[1] %}
        probe:
          test.nop:
            - exists: {{ exists | length }}
            - netvm: {{ netvm }}
        """))
    caller = salt.client.Caller(mopts=salt.config.minion_config(str(qubes.conf)))
    ret = next(iter(caller.cmd('state.show_sls', 'probe')['probe'].values()))
    args = {k: v for d in ret if isinstance(d, dict) for k, v in d.items()}
    assert (args['exists'], args['netvm']) == (0, 'sys-net')


def test_running_qube_cannot_switch_to_a_halted_netvm(qubes: Dom0) -> None:
    """qubes-core-admin on_property_pre_set_netvm: QubesVMNotStartedError."""
    qd = qubes_db.Qubesd(qubes.db)
    qd.run_tool('/usr/bin/qvm-create sys-vpn --class=AppVM --label=blue '
                '--property=provides_network=True')
    qd.run_tool('/usr/bin/qvm-create work --class=AppVM --label=red')
    with qubes_db.transaction(qubes.db) as db:
        db['domains']['work']['power'] = 'Running'
    ret = qubes.salt_state('qvm.prefs', 'work', netvm='sys-vpn')
    assert ret['result'] is False
    assert 'QubesVMNotStartedError: Cannot dynamically attach to stopped qube sys-vpn' in ret['comment']
    assert qubes_db.is_default(qubes.db, 'work', 'netvm')
    qd.set('sys-vpn', 'netvm', 'sys-firewall')
    qd.run_tool('/usr/bin/qvm-start sys-vpn')
    qd.set('work', 'netvm', 'sys-vpn')                       # both running: allowed
    with qubes_db.transaction(qubes.db) as db:
        db['domains']['sys-firewall']['power'] = 'Halted'
    with pytest.raises(qubes_db.QubesVMNotStartedError):    # a reset to the default too
        qd.reset('work', 'netvm')
    assert qubes_db.pref(qubes.db, 'work', 'netvm') == 'sys-vpn'
    qd.set('work', 'netvm', None)                           # no netvm: always allowed


def test_netvm_loops_are_refused_transitively(qubes: Dom0) -> None:
    """qubes-core-admin _setter_netvm with app.domains.get_vms_connected_to."""
    qd = qubes_db.Qubesd(qubes.db)
    qd.run_tool('/usr/bin/qvm-create sys-cjdns --class=AppVM --label=orange '
                '--property=provides_network=True --property=netvm=sys-firewall')
    with pytest.raises(qubes_db.QubesValueError, match='Loops in network are unsupported'):
        qd.set('sys-net', 'netvm', 'sys-cjdns')             # sys-cjdns -> sys-firewall -> sys-net
    with pytest.raises(qubes_db.QubesValueError, match='Loops in network are unsupported'):
        qd.set('sys-firewall', 'netvm', 'sys-firewall')
    assert qubes_db.pref(qubes.db, 'sys-net', 'netvm') is None
    ret = qubes.salt_state('qvm.prefs', 'sys-net', netvm='sys-cjdns')
    assert ret['result'] is False and 'QubesValueError: Loops in network are unsupported' in ret['comment']
